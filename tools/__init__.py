"""The lab around the product: the evaluation grid (compare, grid, compare_report, heldout, plots), speed
(bench, epoch_curve, gpu_bench.sh) and the real-file check (real_check). Run from the repository root as
`python -m tools.compare`, `python -m tools.bench`, ..., or from any folder as `python PATH/tools/compare.py`
(each tool puts the repository root on sys.path); the core modules at the top never import these."""
