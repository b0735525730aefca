"""Speed of the bundle against its model-only ceiling: ``python -m scripts.benchmark`` (see ``__main__``)."""
