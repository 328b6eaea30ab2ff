"""Tests of bstf.analysis (one file per module)."""
