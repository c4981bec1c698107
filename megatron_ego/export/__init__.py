"""Exported models: the file format (``format``) and reading a training checkpoint's weights
(``checkpoint``). Used by ``launch/export.py``, inference and evaluation."""
