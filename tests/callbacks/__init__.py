"""Tests of bstf.callbacks (one file per module)."""
