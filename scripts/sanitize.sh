#!/usr/bin/env bash
# The whole test suite under AddressSanitizer (with LeakSanitizer) and UndefinedBehaviorSanitizer:
# configures a separate gcc build (-DNT_SANITIZE=address,undefined, RelWithDebInfo), builds everything,
# runs every ctest test (timeouts scaled) and then the Python integration tests against the sanitized
# nt-server and nt CLI. Prints a summary; exits non-zero on any test failure or sanitizer report.
#
#   scripts/sanitize.sh                        # build dir build_asan
#   NT_SANITIZE_BUILD_DIR=/tmp/asan scripts/sanitize.sh
#   NT_SANITIZE_SKIP_PYTHON=1 scripts/sanitize.sh   # ctest only
#   scripts/sanitize.sh -R golden              # extra arguments go to ctest
#
# Environment: NT_SANITIZE_BUILD_DIR (build_asan), NT_JOBS (2: compile jobs), NT_TEST_JOBS (2: ctest -j),
# NT_TEST_TIMEOUT_SCALE (4: multiplies every ctest TIMEOUT; the default timeout is 1500 s times it).
# ASan/LSan reports go to <build dir>/sanitizer-reports/asan.<pid> (every process: tests, servers started
# by tests, the CLI); UBSan reports to stderr (in ctest.log / python_tests.log). The summary prints both.
# LeakSanitizer suppressions (third-party thread pools only): tests/sanitizers/lsan.supp.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
dir="${NT_SANITIZE_BUILD_DIR:-build_asan}"
case "$dir" in /*) ;; *) dir="$repo/$dir" ;; esac
jobs="${NT_JOBS:-2}"
test_jobs="${NT_TEST_JOBS:-2}"
scale="${NT_TEST_TIMEOUT_SCALE:-4}"
reports="$dir/sanitizer-reports"
start=$(date +%s)

scripts/install_deps.sh

export CCACHE_BASEDIR="$repo"
# -g1: line tables are enough for symbolised stacks, and much cheaper to compile than -g.
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=gcc -DCMAKE_CXX_COMPILER=g++ \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG" "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG" \
  -DNT_SANITIZE=address,undefined -DNT_TEST_TIMEOUT_SCALE="$scale" >/dev/null || {
  echo "sanitize: cmake failed" >&2
  exit 2
}
build_start=$(date +%s)
if ! nice -n 10 ninja -C "$dir" -j "$jobs"; then
  echo "sanitize: build failed" >&2
  exit 2
fi
build_s=$(( $(date +%s) - build_start ))

rm -rf "$reports"
mkdir -p "$reports"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:log_path=$reports/asan"
export LSAN_OPTIONS="suppressions=$repo/tests/sanitizers/lsan.supp:print_suppressions=0"
# UBSan (gcc's runtime) ignores log_path: its reports go to stderr, which ctest (--output-on-failure) and
# the Python tests (a failing test prints its server's log) show; the summary greps both logs for them.
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
ulimit -c 0

ctest_start=$(date +%s)
(cd "$dir" && ctest -j "$test_jobs" --timeout $((1500 * scale)) --output-on-failure "$@") 2>&1 |
  tee "$dir/ctest.log"
ctest_status=${PIPESTATUS[0]}
ctest_s=$(( $(date +%s) - ctest_start ))

py_status=skipped
py_s=0
rm -f "$dir/python_tests.log"
if [[ -z "${NT_SANITIZE_SKIP_PYTHON:-}" ]]; then
  # run_python_tests.sh imports the generated stubs from build/python; warn when they differ from this
  # build's (proto files changed since the last plain build).
  if [[ -d build/python/nt ]] && ! diff -rq -x '__pycache__' build/python/nt "$dir/python/nt" >/dev/null; then
    echo "sanitize: warning: build/python stubs differ from $dir/python (rebuild build/ first)" >&2
  fi
  py_start=$(date +%s)
  NT_SERVER_BIN="$dir/server/nt-server" NT_CLI_BIN="$dir/client/nt" scripts/run_python_tests.sh 2>&1 |
    tee "$dir/python_tests.log"
  py_status=${PIPESTATUS[0]}
  py_s=$(( $(date +%s) - py_start ))
fi

echo
echo "==== sanitize.sh summary ($(basename "$dir"): gcc -fsanitize=address,undefined, timeouts x$scale) ===="
echo "build: ${build_s} s"
echo "ctest: $(grep -E '^[0-9]+% tests passed' "$dir/ctest.log" | tail -1) (exit ${ctest_status}, ${ctest_s} s)"
grep -E '^\s+[0-9]+ - .*\((Failed|Timeout|Subprocess aborted|SEGFAULT|Exception|Not Run)' "$dir/ctest.log" |
  sed 's/^/  /'
if [[ "$py_status" != skipped ]]; then
  ran=$(grep -E '^Ran [0-9]+ tests' "$dir/python_tests.log" | tail -1)
  res=$(grep -E '^(OK|FAILED)' "$dir/python_tests.log" | tail -1)
  echo "python: ${ran:-no result} ${res} (exit ${py_status}, ${py_s} s)"
  grep -E '^(FAIL|ERROR): ' "$dir/python_tests.log" | sed 's/^/  /'
else
  echo "python: skipped"
fi
mapfile -t files < <(find "$reports" -type f | sort)
mapfile -t ub < <(cat "$dir/ctest.log" "$dir/python_tests.log" 2>/dev/null | grep -E 'runtime error:|ERROR: [A-Za-z]+Sanitizer' |
                  sort | uniq -c)
echo "UBSan/sanitizer lines in test output: ${#ub[@]} distinct"
for l in "${ub[@]}"; do echo "  $l"; done
echo "ASan/LSan report files: ${#files[@]}"
for f in "${files[@]}"; do
  echo "--- $f"
  grep -m1 -E 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$f" | sed 's/^/  /'
  grep -m1 -E '^SUMMARY:' "$f" | sed 's/^/  /'
  grep -m3 -E '#[0-9]+ .* in .*(/core/|/server/|/client/|/tests/)' "$f" | sed 's/^ */    /'
done
echo "total: $(( $(date +%s) - start )) s"

status=0
[[ "$ctest_status" == 0 ]] || status=1
[[ "$py_status" == 0 || "$py_status" == skipped ]] || status=1
[[ ${#files[@]} == 0 && ${#ub[@]} == 0 ]] || status=1
echo "sanitize: $([[ $status == 0 ]] && echo PASS || echo FAIL)"
exit $status
