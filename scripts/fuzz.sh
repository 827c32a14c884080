#!/usr/bin/env bash
# libFuzzer over request decoding and validation (tests/fuzz): builds the fuzzers with clang
# (-DNT_BUILD_FUZZERS=ON: -fsanitize=fuzzer,address,undefined) into build_fuzz, writes seed corpora from
# the golden cases and examples/*.json (nt_fuzz_seeds), runs each target for SECONDS_PER_TARGET on a
# temporary copy of its seeds (plus tests/fuzz/regressions/<target>), prints executions and findings per
# target and exits non-zero on any crash, leak, timeout or out-of-memory artefact.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      # default 60
#   NT_FUZZ_TARGETS="tensor_fuzzer" scripts/fuzz.sh 30
#
# Environment: NT_FUZZ_BUILD_DIR (build_fuzz), NT_JOBS (2), NT_FUZZ_TARGETS (all four). Limits per run:
# -rss_limit_mb=2048 -malloc_limit_mb=1024 (a single allocation over 1 GiB is a finding) -timeout=25 (s per
# input). Artefacts (crash-*, leak-*, timeout-*, oom-*) land in <build dir>/artifacts/<target>/; reproduce
# one with <build dir>/tests/fuzz/<target> <artefact>, and add it to tests/fuzz/regressions/<target>/
# once fixed.
set -uo pipefail

secs="${1:-60}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
dir="${NT_FUZZ_BUILD_DIR:-build_fuzz}"
case "$dir" in /*) ;; *) dir="$repo/$dir" ;; esac
jobs="${NT_JOBS:-2}"
targets=(${NT_FUZZ_TARGETS:-kernel_request_fuzzer describe_fuzzer arch_json_fuzzer tensor_fuzzer})
golden="$repo/../shared/golden/cases"

scripts/install_deps.sh
# clang and its runtimes (libFuzzer, ASan, UBSan).
missing=()
for p in clang-14 libclang-rt-14-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  SUDO=""
  [[ "$(id -u)" == 0 ]] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
  $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}"
fi

export CCACHE_BASEDIR="$repo"
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" \
  -DNT_BUILD_FUZZERS=ON -DNT_BUILD_BENCH=OFF >/dev/null || {
  echo "fuzz: cmake failed" >&2
  exit 2
}
if ! nice -n 10 ninja -C "$dir" -j "$jobs" "${targets[@]}" nt_fuzz_seeds; then
  echo "fuzz: build failed" >&2
  exit 2
fi

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
ulimit -c 0
seeds="$dir/seeds"
rm -rf "$seeds"
"$dir/tests/fuzz/nt_fuzz_seeds" "$golden" "$repo/examples" "$seeds" || {
  echo "fuzz: writing the seed corpora failed" >&2
  exit 2
}

work="$(mktemp -d /tmp/nt-fuzz.XXXXXX)"
trap 'rm -rf "$work"' EXIT
declare -A execs times findings rcs
status=0
for t in "${targets[@]}"; do
  corpus="$work/$t"
  art="$dir/artifacts/$t"
  mkdir -p "$corpus" "$art"
  rm -f "$art"/crash-* "$art"/leak-* "$art"/timeout-* "$art"/oom-*
  [[ -d "$seeds/${t%_fuzzer}" ]] && cp "$seeds/${t%_fuzzer}"/* "$corpus"/
  [[ -d tests/fuzz/regressions/$t ]] && cp tests/fuzz/regressions/$t/* "$corpus"/ 2>/dev/null
  dict=()
  [[ -f "$seeds/${t%_fuzzer}.dict" ]] && dict=("-dict=$seeds/${t%_fuzzer}.dict")
  echo "fuzz: $t for ${secs} s ($(ls "$corpus" | wc -l) seeds) ..."
  start=$(date +%s)
  "$dir/tests/fuzz/$t" -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=25 \
    -print_final_stats=1 -artifact_prefix="$art/" "${dict[@]}" "$corpus" >"$dir/$t.log" 2>&1
  rcs[$t]=$?
  times[$t]=$(( $(date +%s) - start ))
  execs[$t]=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$dir/$t.log" | grep -oE '[0-9]+$' | tail -1)
  [[ -n "${execs[$t]}" ]] || execs[$t]=$(grep -oE '#[0-9]+' "$dir/$t.log" | tail -1 | tr -d '#')
  findings[$t]=$(find "$art" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
  if [[ "${rcs[$t]}" != 0 || "${findings[$t]}" != 0 ]]; then
    status=1
    echo "fuzz: $t FAILED (exit ${rcs[$t]}); log $dir/$t.log:"
    grep -E 'ERROR: |runtime error:|SUMMARY:|Test unit written|out-of-memory|Timeout|#[0-9]+ .* in .*(/core/|/server/|/client/|/tests/)' \
      "$dir/$t.log" | head -20 | sed 's/^/  /'
  fi
done

echo
echo "==== fuzz.sh summary (${secs} s per target, clang -fsanitize=fuzzer,address,undefined) ===="
printf '%-24s %12s %10s %8s %6s\n' target executions findings seconds exit
for t in "${targets[@]}"; do
  printf '%-24s %12s %10s %8s %6s\n' "$t" "${execs[$t]:-?}" "${findings[$t]}" "${times[$t]}" "${rcs[$t]}"
done
for t in "${targets[@]}"; do
  for f in "$dir/artifacts/$t"/{crash,leak,timeout,oom}-*; do
    [[ -e "$f" ]] && echo "artefact: $f (reproduce: $dir/tests/fuzz/$t $f)"
  done
done
echo "fuzz: $([[ $status == 0 ]] && echo PASS || echo FAIL)"
exit $status
