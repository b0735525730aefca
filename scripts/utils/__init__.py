"""Helpers shared by every layer. ``files``, ``flags``, ``errors`` and ``metadata`` need only the standard library;
``distributed`` needs torch."""
