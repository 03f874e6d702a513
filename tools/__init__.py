"""The lab around the product: evaluation grid, speed, memory, checks, other physics; run as `python -m tools.NAME`
or `python PATH/tools/NAME.py`. The core modules never import these."""
