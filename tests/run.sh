#!/usr/bin/env bash
# The test command. On a fresh Debian machine it installs what the tests
# need (idempotent), then runs, in order: rustfmt, clippy, every Rust test
# (unit, property and end-to-end on real processes), a bounded fuzz run of
# the SSE scanner, and the Python tests that drive the gateway with the
# official `openai` SDK.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n== %s\n' "$*"; }

# --- what the tests need ------------------------------------------------
need=()
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v redis-server >/dev/null || need+=(redis-server)   # shared breaker and billing ledger tests
command -v c++ >/dev/null || need+=(g++)                     # libFuzzer for the fuzz run
if [ ${#need[@]} -gt 0 ]; then
  step "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  # The tests start their own redis-server on free ports.
  if command -v systemctl >/dev/null; then systemctl stop redis-server 2>/dev/null || true; fi
fi
# eBPF programs (loader/build.rs): clang for -target bpf, libbpf's helper
# headers, the kernel UAPI headers. Without them the gateway builds with
# eBPF disabled and the eBPF tests fail, as they should in CI.
bpf=()
command -v clang-19 >/dev/null || command -v clang-16 >/dev/null || bpf+=(clang-19)
[ -f /usr/include/bpf/bpf_helpers.h ] || bpf+=(libbpf-dev)
[ -f /usr/include/linux/bpf.h ] || bpf+=(linux-libc-dev)
if [ ${#bpf[@]} -gt 0 ]; then
  step "installing ${bpf[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends -o DPkg::Lock::Timeout=600 "${bpf[@]}"
fi
# Classic tracepoints need tracefs (the gateway also tries to mount it).
mountpoint -q /sys/kernel/tracing 2>/dev/null || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
venv="$root/target/pyenv"
req="$root/tests/python/requirements.txt"
stamp="$venv/.requirements.sha"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  step "python venv with the openai SDK ($venv)"
  mkdir -p "$root/target"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi

# --- checks ---------------------------------------------------------------
step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (unit, property, end-to-end)"
cargo test --workspace --locked

step "fuzz: SSE scanner + chunked decoder, bounded run"
# By hand: the same instrumented build cargo-fuzz makes, without compiling
# cargo-fuzz itself on a fresh machine. Longer runs: fuzz/run.sh 3600.
FUZZ_BY_HAND=1 bash fuzz/run.sh "${FUZZ_SECONDS:-30}"

step "load harness smoke: loadgen -> mock, tollgate, the floor proxy, nginx if installed (seconds)"
bash benches/run.sh --smoke

step "python: official openai SDK against a real gateway"
cargo build --locked -p tollgate --bin tollgate
TOLLGATE_BIN="$root/target/debug/tollgate" "$venv/bin/python" -m pytest -q tests/python
