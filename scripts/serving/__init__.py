"""Servers around the bundle: MONAI Label (``python -m scripts.serving.label_server``)."""
