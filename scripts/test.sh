#!/usr/bin/env bash
# The whole test suite: install packages, build, C++ unit/golden tests (ctest), then the Python
# integration tests against live servers (golden cases through the server, bad requests, streaming, CLI).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
(cd build && ctest --output-on-failure -j2)
scripts/run_python_tests.sh
