"""Entry point of the Bazel py_test targets: runs pytest on the file given as argument."""

import os
import sys

import pytest

if __name__ == "__main__":
    test_file = sys.argv[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(test_file)))
    sys.exit(pytest.main([test_file, "-q", "-c", os.path.join(root, "pytest.ini"), "--rootdir", root]))
