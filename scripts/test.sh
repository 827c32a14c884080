#!/usr/bin/env bash
# The whole test suite: install packages, build, C++ unit/golden tests (ctest), then the Python
# integration tests against live servers (golden cases through the server, bad requests, streaming, CLI,
# several servers and faults, load, TLS and tokens), then the Node.js client's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh --tests
scripts/build.sh
(cd build && ctest --output-on-failure -j2)
scripts/run_python_tests.sh
scripts/run_node_tests.sh
