"""The lab around the product: the evaluation grid (compare, compare_report), speed and memory (bench, memory,
gpu_bench.sh), the real-file check (real_check) and data of other physics (other_physics). Run as
`python -m tools.NAME` from the repository root or `python PATH/tools/NAME.py` from any folder; the core modules
never import these."""
