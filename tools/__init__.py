"""Tools around the product, run as `python -m tools.NAME` or `python PATH/tools/NAME.py`; core never imports them."""
