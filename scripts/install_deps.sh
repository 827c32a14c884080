#!/usr/bin/env bash
# The one list of Debian packages nt-server needs (README, .ci/run and the Dockerfile all call this).
# Usage: scripts/install_deps.sh [--runtime | --examples | --tests]
#   --runtime: only what the server binary needs to run; --examples: also the Fashion-MNIST example's data
#   and plotting (examples/fashion_mnist.py); --tests: also what the tests use (openssl for TLS
#   certificates, node and npm for the Node.js client).
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
RUNTIME_PKGS=(libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623 libtbb12 libopenblas0-pthread libre2-9 libc-ares2 zlib1g libmuparser2v5 ca-certificates)
BUILD_PKGS=(g++ cmake ninja-build pkg-config ccache
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler grpc-proto
  libeigen3-dev libtbb-dev libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev
  libopenblas-dev nlohmann-json3-dev zlib1g-dev libmuparser-dev
  python3-grpcio python3-protobuf python3-numpy)
EXAMPLE_PKGS=(dataset-fashion-mnist python3-matplotlib)
case "${1:-}" in
  --runtime) PKGS=("${RUNTIME_PKGS[@]}") ;;
  --examples) PKGS=("${BUILD_PKGS[@]}" "${EXAMPLE_PKGS[@]}") ;;
  --tests) PKGS=("${BUILD_PKGS[@]}" openssl) ;;
  *) PKGS=("${BUILD_PKGS[@]}") ;;
esac
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
  $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}"
fi
# The tests also run the Node.js client (client/node): node and npm, which this machine kind usually ships.
if [ "${1:-}" = --tests ] && ! { command -v node >/dev/null && command -v npm >/dev/null; }; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends nodejs npm
fi
