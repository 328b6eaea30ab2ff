#!/usr/bin/env bash
# Runs the test suite under Bazel when Bazel is installed (optional build path).
# Set-up on Debian/Ubuntu: apt-get install bazel-bootstrap bazel-bootstrap-source
# (.bazelrc points Bazel's repositories at the copies bazel-bootstrap-source ships, so it works offline).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v bazel >/dev/null 2>&1; then
  echo "bazel not installed: skipping the Bazel build (optional)."
  exit 0
fi
if [ ! -d /usr/src/bazel-bootstrap/mock_repos ]; then
  echo "bazel found but /usr/src/bazel-bootstrap/mock_repos is missing: apt-get install bazel-bootstrap-source" >&2
  exit 1
fi
bazel test "${@:-//...}"
