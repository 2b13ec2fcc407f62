"""Compression methods. Each one plugs into the shared adapt/search/finetune/export pipeline through
the small interface in `base.py`; `METHODS` maps a method name to its implementation."""
