#!/usr/bin/env bash
# Runs the Node.js client tests (tests/node) against a real nt-server (build/server/nt-server, or
# $NT_SERVER_BIN) that each test file starts on a free loopback port. Installs the client's npm
# dependencies first (npm ci in client/node) when node_modules is missing or older than the lock file.
# Exits non-zero if anything fails.
#
#   scripts/run_node_tests.sh             # from anywhere; extra arguments go to `node --test`
#
# Needs node >= 18 and npm, and the server built first (ninja -C build nt-server).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "run_node_tests: '$tool' not found (install Node.js >= 18 and npm)" >&2
    exit 2
  fi
done

server_bin="${NT_SERVER_BIN:-$repo/build/server/nt-server}"
if [[ ! -x "$server_bin" ]]; then
  echo "run_node_tests: nt-server not found at $server_bin (build it: ninja -C build nt-server)" >&2
  exit 2
fi

modules=client/node/node_modules
if [[ ! -d "$modules" || client/node/package-lock.json -nt "$modules" ]]; then
  echo "run_node_tests: npm ci in client/node" >&2
  (cd client/node && npm ci --no-audit --no-fund)
  touch "$modules"  # npm ci may keep the directory's old time: mark it up to date with the lock file.
fi

unset NT_SERVER NT_TOKEN NT_TLS_CA  # The tests start their own server; never talk to one from the environment.

start=$(date +%s)
status=0
# Test files by name: Node 21+ no longer searches a directory argument (node --test tests/node/).
node --test "$@" tests/node/*_test.js || status=$?
echo "run_node_tests: exit status ${status} after $(( $(date +%s) - start )) s" >&2
exit "${status}"
