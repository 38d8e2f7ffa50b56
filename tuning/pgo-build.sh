#!/usr/bin/env bash
# Profile-guided build of the gateway for production nodes.
#
# tollgate's per-request work is spread over a wide stretch of code (the
# request and response state machines, the body scanner, httparse, monoio,
# mimalloc, the ledger): on a 2-core box it misses the 32 KiB instruction
# cache hundreds of times per request, where a bare proxy misses a handful
# (benches/RESULTS.md, "User-space instructions per request, counted").
# A profile tells LLVM which paths are hot, so it lays them out together,
# inlines along them and moves the rest out of the way. The build is
# otherwise the release build: same code, same tests; only layout and
# inlining change.
#
#   tuning/pgo-build.sh [SECONDS_PER_LOAD]     (default 6)
#
# Steps: build an instrumented gateway (target/pgo-gen), serve the
# built-in mock's traffic through it on 127.0.0.1 (JSON and SSE answers,
# and JSON with a 32 KiB prompt, without auth and with key auth + quotas +
# token accounting, the way the load harness runs scenarios 1-3), merge
# the profile, build with it
# (target/pgo/release/tollgate). Needs wrk and the llvm-profdata of
# rustc's own LLVM major version (Debian: `apt-get install llvm-22` for
# rustc's LLVM 22); the script installs both with apt when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
secs=${1:-6}
. benches/load/config.sh

llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
find_profdata() { { command -v "llvm-profdata-$llvm_major" "/usr/lib/llvm-$llvm_major/bin/llvm-profdata" || true; } | head -1; }
need=()
[ -n "$(find_profdata)" ] || need+=("llvm-$llvm_major")
command -v wrk >/dev/null || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  echo "pgo: apt-get install ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
profdata=$(find_profdata)

data="$root/target/pgo-data"
rm -rf "$data"; mkdir -p "$data"
echo "pgo: instrumented build (target/pgo-gen)"
RUSTFLAGS="-Cprofile-generate=$data" cargo build --release --target-dir target/pgo-gen \
  -p tollgate --bin tollgate
cargo build --release -p tollgate --bin tollgate   # the mock (not profiled)
gen=target/pgo-gen/release/tollgate

dir=$(mktemp -d /tmp/tollgate-pgo.XXXX)
MOCK=127.0.0.1:19501; SUT=127.0.0.1:19502
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
target/release/tollgate mock --listen $MOCK --workers 1 2>"$dir/mock.log" & pids+=($!)
post() { curl -s -o /dev/null -w '%{http_code}' -X POST "${@:2}" "http://$1/v1/chat/completions"; }
ready() { for _ in $(seq 300); do [ "$(post "$@")" = 200 ] && return 0; sleep 0.1; done
  echo "pgo: $1 never answered 200" >&2; exit 1; }
ready $MOCK -d '{"model":"gpt-4o-mini","messages":[]}'

# One training run: start the instrumented gateway on CONFIG, drive JSON
# then SSE (usage chunk on) for MODEL with API KEY (may be empty), stop it
# with SIGTERM so it writes its profile.
train() {
  local cfg=$1 model=$2 key=$3 auth=()
  [ -z "$key" ] || auth=(-H "Authorization: Bearer $key")
  $gen serve --config "$cfg" 2>"$dir/serve.log" & local p=$!
  ready $SUT -d "{\"model\":\"$model\",\"messages\":[]}" "${auth[@]}"
  # JSON and SSE with a short prompt, then JSON with a 32 KiB one (the
  # long-run steps of the body scan and the token cache are hot there).
  for load in "0 0" "1 0" "0 32768"; do
    read -r stream pad <<< "$load"
    WRK_STREAM=$stream WRK_USAGE=$stream WRK_KEY=$key WRK_MODEL=$model WRK_PAD_BYTES=$pad \
      wrk -t1 -c32 -d"${secs}s" --timeout 10s -s benches/load/chat.lua "http://$SUT/v1/chat/completions" \
      | grep -E "Requests/sec|non2xx" | tr '\n' ' '
    echo "($(basename "$cfg"), stream=$stream, prompt padding $pad bytes)"
  done
  kill -TERM $p; wait $p || true
}
tollgate_config "$dir/plain.toml" "$SUT" "$MOCK"
train "$dir/plain.toml" gpt-4o-mini ""
sed -e "s|@LISTEN@|$SUT|; s|@WORKERS@|1|; s|@DRIVER@|io_uring|; s|@MOCK@|$MOCK|g" \
  benches/load/systems/tollgate-routing.toml > "$dir/keys.toml"
# The key whose hash tollgate-routing.toml holds (bench.py's ROUTING_KEY).
train "$dir/keys.toml" gpt-4 tg-bench-routing-0123456789abcdef

ls "$data"/*.profraw >/dev/null
"$profdata" merge -o "$data/merged.profdata" "$data"/*.profraw
echo "pgo: optimised build (target/pgo)"
RUSTFLAGS="-Cprofile-use=$data/merged.profdata" cargo build --release --target-dir target/pgo \
  -p tollgate --bin tollgate
echo "pgo: built target/pgo/release/tollgate"
