"""Compatibility layers for code written against other parallel APIs (see imp.py)."""
