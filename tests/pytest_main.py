"""Entry point of the Bazel py_test targets: runs pytest on the file given as argument."""

import os
import sys

import pytest

if __name__ == "__main__":
    test_file = sys.argv[1]
    # The repository root in the runfiles: the nearest parent holding pytest.ini
    # (tests/test_x.py and tests/sub/test_y.py alike).
    root = os.path.dirname(os.path.abspath(test_file))
    while not os.path.exists(os.path.join(root, "pytest.ini")):
        parent = os.path.dirname(root)
        if parent == root:
            sys.exit(f"pytest.ini not found above {test_file}")
        root = parent
    sys.exit(pytest.main([test_file, "-q", "-c", os.path.join(root, "pytest.ini"), "--rootdir", root]))
