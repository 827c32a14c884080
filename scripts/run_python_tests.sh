#!/usr/bin/env bash
# Runs every Python test (tests/python) against the built tree: ntclient from client/python, the
# generated stubs from build/python, a real nt-server (build/server/nt-server, or $NT_SERVER_BIN) and the
# `nt` CLI (build/client/nt, or $NT_CLI_BIN). Exits non-zero if anything fails.
#
#   scripts/run_python_tests.sh            # from anywhere; extra arguments go to unittest
#   NT_RESULTS_DIR=/tmp/golden-results scripts/run_python_tests.sh   # keep the golden result files
#
# Build first: ninja -C build nt-server nt nt_proto_py
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

if [[ ! -d build/python/nt ]]; then
  echo "run_python_tests: build/python/nt is missing; build the stubs first (ninja -C build nt_proto_py)" >&2
  exit 2
fi

export PYTHONPATH="$repo/client/python:$repo/build/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
unset NT_SERVER  # Tests start their own servers; never talk to one from the environment.

start=$(date +%s)
status=0
/usr/bin/python3 -m unittest discover -s tests/python -t tests/python -v "$@" || status=$?
echo "run_python_tests: exit status ${status} after $(( $(date +%s) - start )) s" >&2
exit "${status}"
