#!/usr/bin/env bash
# The main job: install packages, build, start a local nt-server, run the example clients, stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
port_file=$(mktemp)
./build/server/nt-server --address=127.0.0.1:0 --port_file="$port_file" 2>build/demo-server.log &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true; rm -f "$port_file"' EXIT
for _ in $(seq 100); do [ -s "$port_file" ] && break; sleep 0.1; done
export NT_SERVER="127.0.0.1:$(cat "$port_file")"
echo "nt-server is listening on $NT_SERVER"
./build/client/nt health
export PYTHONPATH="$PWD/client/python:$PWD/build/python"
/usr/bin/python3 examples/example_client.py
/usr/bin/python3 -c 'import numpy as np; r = np.random.default_rng(1); np.save("build/x1.npy", r.standard_normal((6, 8)))'
./build/client/nt describe --arch examples/fc_relu.json --x1-shape 6,8
./build/client/nt kernel --arch examples/fc_relu.json --x1 build/x1.npy --get nngp,ntk --out build/k.npz --print
