#!/usr/bin/env bash
# User-space instructions per request, counted by callgrind: a figure the
# shared, noisy box cannot move (the same build gives the same count to
# within ~1%), for A/B of data-path changes where wall-clock CPU time
# drowns a 5% difference. It says nothing about cache misses or the
# kernel's share; wrk (variants.sh) and the harness stay the judges of
# speed. Loopback only; each load run is bounded by its duration.
#
#   benches/load/instructions.sh [json|sse] NAME[:BINARY] ...
#
# NAME is a label; BINARY a tollgate build (default: the release build);
# the name `floor` runs the featureless floor proxy instead. For each:
# start the mock (pinned to the last CPU), start the system under
# callgrind with instrumentation off, warm up with wrk, switch
# instrumentation on, drive DURATION (default 3 s) of wrk load at 8
# connections, dump, and divide the instructions (every thread of the
# process) by the requests wrk completed. Output per system: requests,
# instructions, instructions per request, the connection task's share
# per request (tollgate builds: the request path alone, without the
# runtime's idle turns, timers and the ledger thread), and the profile
# file for `callgrind_annotate --inclusive=yes FILE`.
#
# The whole-process figure moves by up to ±4% between runs of one build
# (how many requests each event-loop turn carries depends on timing);
# the request path's repeats to ~0.1%: compare that one for small
# changes.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/load/config.sh
mode=${1:-}; shift || true
[ "$mode" = json ] || [ "$mode" = sse ] && [ $# -ge 1 ] || { sed -n '2,19p' "$0" >&2; exit 2; }
stream=0; [ "$mode" = sse ] && stream=1
command -v valgrind >/dev/null && command -v wrk >/dev/null || {
  echo "needs valgrind and wrk: apt-get install -y valgrind wrk" >&2; exit 1; }
[ -x target/release/tollgate ] || cargo build --release -p tollgate --bin tollgate
[ -x target/release/floor ] || cargo build --release -p tollgate-benches --bin floor
dir=$(mktemp -d /tmp/tollgate-instructions.XXXX)
MOCK=127.0.0.1:19001; SUT=127.0.0.1:19201
cores=$(nproc)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
target/release/tollgate mock --listen $MOCK --workers 1 \
  --pin-cpu $(( cores > 1 ? cores - 1 : 0 )) 2>"$dir/mock.log" & pids+=($!)
tollgate_config "$dir/tg.toml" "$SUT" "$MOCK"
post() { curl -s -o /dev/null -X POST -d '{"model":"gpt-4o-mini","messages":[]}' "http://$1/v1/chat/completions"; }
ready() { for _ in $(seq 1200); do post "$1" && return 0; sleep 0.1; done; echo "$1 never answered" >&2; exit 1; }
load() { WRK_STREAM=$stream wrk -t1 -c8 -d"$1" --timeout 10s -s benches/load/chat.lua "http://$SUT/v1/chat/completions"; }
ready $MOCK
printf '%-10s %9s %14s %10s %10s  %s\n' system requests instructions per_req path_req profile
for v in "$@"; do
  IFS=: read -r name bin <<< "$v"
  if [ "$name" = floor ]; then cmd=(target/release/floor $SUT $MOCK)
  else cmd=("${bin:-target/release/tollgate}" serve --config "$dir/tg.toml"); fi
  out=$dir/$name.callgrind
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" "${cmd[@]}" \
    >/dev/null 2>"$dir/$name.valgrind.log" & p=$!; pids+=($p)
  ready $SUT
  load 2s >/dev/null
  # callgrind reads its commands while the program runs: one request
  # after each command makes it act on it.
  callgrind_control -i on $p >/dev/null 2>&1 & c=$!; sleep 0.5; post $SUT; wait $c
  load "${DURATION:-3}s" > "$dir/$name.wrk"
  callgrind_control -d $p >/dev/null 2>&1 & c=$!; sleep 0.5; post $SUT; wait $c
  kill -9 $p; wait $p 2>/dev/null || true
  grep -q "non2xx=0" "$dir/$name.wrk" || { echo "$name: non-2xx answers" >&2; cat "$dir/$name.wrk" >&2; exit 1; }
  n=$(awk '/requests in/{print $1}' "$dir/$name.wrk")
  f=$(ls -t "$out".* | head -1)
  ir=$(awk '/^summary:/{print $2}' "$f")
  # The two nudges are requests too.
  n=$((n + 2))
  path=$(callgrind_annotate --inclusive=yes "$f" 2>/dev/null \
    | awk -v n=$n '!done && /server\/conn.rs:tollgate::server::conn::serve::\{\{closure\}\}/ {
        gsub(",", "", $1); printf "%d", $1 / n; done = 1 }')
  printf '%-10s %9d %14d %10d %10s  %s\n' "$name" $n "$ir" $((ir / n)) "${path:--}" "$f"
done
