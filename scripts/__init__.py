"""Custom components of the SIIM-ACR pneumothorax segmentation bundle.

Configs import them as ``"$import scripts"`` followed by ``"$from scripts.<module> import <name>"``.
"""
