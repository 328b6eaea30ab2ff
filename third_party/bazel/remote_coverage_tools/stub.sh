#!/bin/sh
echo "coverage is not available in this offline Bazel" >&2
exit 1
