#!/usr/bin/env bash
# Runs the sse_chunked fuzz target for SECONDS (default 60) on the stable
# toolchain. libFuzzer instrumentation needs no nightly feature; the one
# unstable flag cargo-fuzz passes is allowed with RUSTC_BOOTSTRAP=1.
#
#   fuzz/run.sh 60            # bounded run, as the test script does
#   fuzz/run.sh 3600          # a longer run
#   FUZZ_BY_HAND=1 fuzz/run.sh 60   # skip cargo-fuzz, use step 2 below
#
# Order of attempts:
#   1. cargo-fuzz (installed, or `cargo install cargo-fuzz --locked`):
#      RUSTC_BOOTSTRAP=1 cargo fuzz run sse_chunked --sanitizer none
#   2. the same instrumented build by hand (what cargo-fuzz does):
#      RUSTFLAGS with -Cpasses=sancov-module and the sanitizer-coverage
#      LLVM options, `--target <host>` so build scripts and proc macros
#      stay uninstrumented, then the binary itself.
# If neither can build or run the target, it says why and exits non-zero:
# a fuzz run that did not happen is never reported as passed.
#
# New inputs go to fuzz/target/corpus/sse_chunked (not committed); the
# committed seeds in fuzz/corpus/sse_chunked are read only. Crashes are
# written to fuzz/artifacts/sse_chunked/.
set -euo pipefail

SECONDS_TO_RUN="${1:-60}"
if ! [[ "$SECONDS_TO_RUN" =~ ^[0-9]+$ ]] || [ "$SECONDS_TO_RUN" -lt 1 ]; then
    echo "usage: $0 SECONDS" >&2
    exit 2
fi

cd "$(dirname "$0")"
TARGET=sse_chunked
SEEDS="corpus/$TARGET"
WORK="target/corpus/$TARGET"
ARTIFACTS="artifacts/$TARGET"
mkdir -p "$WORK" "$ARTIFACTS"
LOG="target/$TARGET.log"
export RUSTC_BOOTSTRAP=1
HOST="$(rustc -vV | sed -n 's/^host: //p')"
LIBFUZZER_ARGS=(
    "-max_total_time=$SECONDS_TO_RUN"
    "-artifact_prefix=$ARTIFACTS/"
    "-max_len=8192"
    "-print_final_stats=1"
)

fail() {
    echo "fuzz/run.sh: cannot fuzz: $*" >&2
    exit 1
}

command -v c++ >/dev/null 2>&1 || command -v clang++ >/dev/null 2>&1 ||
    fail "no C++ compiler (libfuzzer-sys builds libFuzzer from C++ source); install g++ or clang"

have_cargo_fuzz() { [ -z "${FUZZ_BY_HAND:-}" ] && cargo fuzz --version >/dev/null 2>&1; }

if [ -z "${FUZZ_BY_HAND:-}" ] && ! have_cargo_fuzz; then
    echo "fuzz/run.sh: cargo-fuzz not installed; trying cargo install cargo-fuzz --locked" >&2
    cargo install cargo-fuzz --locked >&2 || echo "fuzz/run.sh: cargo install cargo-fuzz failed; building by hand" >&2
fi

run_binary() {
    # Runs the instrumented binary $1, logging; fails if libFuzzer did not
    # finish a run.
    local bin="$1"
    set +e
    "$bin" "${LIBFUZZER_ARGS[@]}" "$WORK" "$SEEDS" 2>&1 | tee "$LOG"
    local rc=${PIPESTATUS[0]}
    set -e
    return "$rc"
}

report() {
    local runs
    runs="$(sed -n 's/^Done \([0-9]*\) runs in .*/\1/p' "$LOG" | tail -n1)"
    [ -n "$runs" ] || fail "libFuzzer did not report a finished run (see $LOG)"
    echo "fuzz/run.sh: $TARGET: $runs execs in ${SECONDS_TO_RUN}s, no crash"
}

if have_cargo_fuzz; then
    # cargo fuzz runs libFuzzer and passes everything after `--` to it.
    set +e
    cargo fuzz run "$TARGET" --sanitizer none "$WORK" "$SEEDS" -- \
        "${LIBFUZZER_ARGS[@]}" 2>&1 | tee "$LOG"
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" -ne 0 ] && ! grep -q '^Done [0-9]* runs' "$LOG"; then
        if grep -qE 'deadly signal|panicked|ERROR: libFuzzer' "$LOG"; then
            echo "fuzz/run.sh: $TARGET FAILED: crash input in $ARTIFACTS/" >&2
            exit 1
        fi
        echo "fuzz/run.sh: cargo fuzz exited $rc before fuzzing; building by hand" >&2
    else
        [ "$rc" -eq 0 ] || { echo "fuzz/run.sh: $TARGET FAILED (exit $rc)" >&2; exit "$rc"; }
        report
        exit 0
    fi
fi

# By hand: the flags cargo-fuzz 0.13 passes with --sanitizer none.
export RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --release --bin "$TARGET" --target "$HOST" >&2 ||
    fail "instrumented build failed (RUSTC_BOOTSTRAP=1, rustc $(rustc -V))"
BIN="target/$HOST/release/$TARGET"
[ -x "$BIN" ] || fail "built, but $BIN is missing"
if ! run_binary "$BIN"; then
    if grep -q '^Done [0-9]* runs' "$LOG"; then
        fail "libFuzzer exited non-zero after the run (see $LOG)"
    fi
    echo "fuzz/run.sh: $TARGET FAILED: crash input in $ARTIFACTS/" >&2
    exit 1
fi
report
