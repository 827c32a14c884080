#!/usr/bin/env bash
# Builds the Docker image from a debootstrapped base (no registry is reachable here), runs it with host
# networking on a loopback port, and checks grpc.health.v1 and a kernel through it. dockerd runs with
# no bridge and no firewall changes, and is stopped afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends docker.io debootstrap >/dev/null
work=$(mktemp -d /tmp/nt-docker.XXXXXX)
exec_root="$work/exec"
mkdir -p "$exec_root" "$work/data"
docker_cmd=(/usr/bin/docker -H "unix://$exec_root/docker.sock")
cleanup() {
  "${docker_cmd[@]}" rm -f nt-server-check >/dev/null 2>&1 || true
  if [ -f "$exec_root/dockerd.pid" ]; then kill "$(cat "$exec_root/dockerd.pid")" 2>/dev/null || true; sleep 2; fi
  umount "$exec_root"/netns/* 2>/dev/null || true
  rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT
dockerd --data-root "$work/data" --exec-root "$exec_root" -H "unix://$exec_root/docker.sock" \
  --pidfile "$exec_root/dockerd.pid" --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
  >"$work/dockerd.log" 2>&1 &
for _ in $(seq 60); do "${docker_cmd[@]}" info >/dev/null 2>&1 && break; sleep 1; done
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
debootstrap --variant=minbase bookworm "$work/rootfs" "${mirror:-http://deb.debian.org/debian}" >/dev/null
tar -C "$work/rootfs" -c . | "${docker_cmd[@]}" import - local/bookworm:base >/dev/null
rm -rf "$work/rootfs"
DOCKER_BUILDKIT=1 "${docker_cmd[@]}" build --network host --build-arg BASE=local/bookworm:base -t nt-server:check . 
"${docker_cmd[@]}" image ls nt-server:check
port=50987
"${docker_cmd[@]}" run -d --name nt-server-check --network host -e NT_HEALTH_ADDRESS=127.0.0.1:$port \
  nt-server:check --address=127.0.0.1:$port >/dev/null
for _ in $(seq 50); do ./build/client/nt health --server 127.0.0.1:$port >/dev/null 2>&1 && break; sleep 0.2; done
./build/client/nt health --server 127.0.0.1:$port
/usr/bin/python3 -c "import numpy as np; np.save('$work/x1.npy', np.random.default_rng(1).standard_normal((6, 8)))"
./build/client/nt kernel --server 127.0.0.1:$port --arch examples/fc_relu.json --x1 "$work/x1.npy" --get nngp --print | head -3
for _ in $(seq 30); do
  status=$("${docker_cmd[@]}" inspect -f '{{.State.Health.Status}}' nt-server-check)
  [ "$status" = healthy ] && break
  sleep 1
done
echo "container health: $status"
[ "$status" = healthy ]
"${docker_cmd[@]}" stop -t 15 nt-server-check >/dev/null
code=$("${docker_cmd[@]}" inspect -f '{{.State.ExitCode}}' nt-server-check)
echo "exit code after SIGTERM: $code"
[ "$code" = 0 ]
