#!/usr/bin/env bash
# A/B of tollgate builds or settings against nginx, in one run: wrk ->
# {each tollgate variant, the featureless floor proxy, nginx} -> one mock (pinned to the last CPU),
# interleaved per repetition. Prints req/s, p99 and the system's CPU
# microseconds per request (utime+stime of all its threads, from /proc) and its user part.
# Loopback only; every wrk run is bounded by its duration.
#
#   benches/load/variants.sh REPS DURATION "json sse" -- NAME:BINARY:SERVER_TOML ...
#
# NAME names the variant; BINARY is a tollgate binary (empty: the release
# build); SERVER_TOML is extra `[server]` lines, `;`-separated. Example,
# the io_uring task-run modes of one build:
#
#   benches/load/variants.sh 3 6s "json sse" -- \
#     defer:: coop::'io_uring_task_run="coop"' interrupt::'io_uring_task_run="interrupt"'
#
# WRK_TOKENS=1000 makes each answer 1,000 tokens (SSE: 1,000 events).
# WRK_CONNS sets wrk's connections (64); WRK_HEADER adds one request
# header, e.g. WRK_HEADER="x-mock-chunk-delay-ms: 10" paces the mock's
# events 10 ms apart (model speed; give -d several seconds).
# PROBES adds the raw io_uring probe (benches/src/bin/uring_probe.rs) with
# io_uring features on, as space-separated NAME:FLAGS (FLAGS ,-separated):
#
#   PROBES="uring: uring-ms:--multishot uring-msfx:--multishot,--fixed" \
#     benches/load/variants.sh 3 5s "json sse" -- cur::
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/load/config.sh
[ $# -ge 5 ] && [ "$4" = "--" ] || { sed -n '2,25p' "$0" >&2; exit 2; }
reps=$1; dur=$2; modes=$3; shift 4
bin=target/release/tollgate
[ -x "$bin" ] || cargo build --release -p tollgate --bin tollgate
floor=target/release/floor
[ -x "$floor" ] || cargo build --release -p tollgate-benches --bin floor
probe=target/release/uring-probe
[ -z "${PROBES:-}" ] || [ -x "$probe" ] || cargo build --release -p tollgate-benches --bin uring-probe
command -v wrk >/dev/null && command -v nginx >/dev/null || {
  echo "needs wrk and nginx: apt-get install -y wrk nginx-light" >&2; exit 1; }
dir=$(mktemp -d /tmp/tollgate-variants.XXXX)
MOCK=127.0.0.1:19001
pids=(); names=(); addrs=(); sut=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true; }
trap cleanup EXIT
cores=$(nproc)
$bin mock --listen $MOCK --workers 1 --pin-cpu $(( cores > 1 ? cores - 1 : 0 )) 2>"$dir/mock.log" & pids+=($!)
port=19300
for v in "$@"; do
  IFS=: read -r name vbin extra <<< "$v"
  vbin=${vbin:-$bin}; port=$((port + 1))
  tollgate_config "$dir/$name.toml" "127.0.0.1:$port" "$MOCK" 1 "$extra"
  "$vbin" serve --config "$dir/$name.toml" 2>"$dir/$name.log" & p=$!
  pids+=($p); names+=("$name"); addrs+=("127.0.0.1:$port"); sut+=("$p")
done
sed -e "s|@WORKERS@|1|; s|@DIR@|$dir|g; s|@UPSTREAM@|$MOCK|; s|@LISTEN@|127.0.0.1:19299|" \
  benches/load/nginx.conf.in > "$dir/nginx.conf"
nginx -p "$dir" -c "$dir/nginx.conf"
# The featureless proxy on tollgate's runtime (benches/src/bin/floor.rs).
$floor 127.0.0.1:19298 $MOCK 2>"$dir/floor.log" & pids+=($!)
names+=(floor); addrs+=(127.0.0.1:19298); sut+=("$!")
pport=19280
for v in ${PROBES:-}; do
  IFS=: read -r name flags <<< "$v"; pport=$((pport + 1))
  # shellcheck disable=SC2086
  $probe 127.0.0.1:$pport $MOCK ${flags//,/ } >/dev/null 2>"$dir/$name.log" & pids+=($!)
  names+=("$name"); addrs+=(127.0.0.1:$pport); sut+=("$!")
done
for a in $MOCK "${addrs[@]}" 127.0.0.1:19299; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://$a/v1/models" && break; sleep 0.05; done
done
master=$(cat "$dir/nginx.pid")
names+=(nginx); addrs+=(127.0.0.1:19299); sut+=("$master $(pgrep -P "$master" | tr '\n' ' ')")
# "total user" ticks of all threads: user time alone is the system's own
# code (the kernel's TCP work is in the rest).
cpu_ticks() { local t=0 u=0; for p in "$@"; do
  for s in /proc/"$p"/task/*/stat; do set -- $(sed 's/.*) //' "$s"); t=$((t + ${12} + ${13})); u=$((u + ${12})); done; done; echo "$t $u"; }
hz=$(getconf CLK_TCK)
printf '%-5s %-12s %10s %9s %12s %12s %7s\n' mode system req/s p99 cpu_us/req user_us/req non2xx
for _ in $(seq "$reps"); do
  for mode in $modes; do
    stream=0; [ "$mode" = sse ] && stream=1
    for i in "${!names[@]}"; do
      # shellcheck disable=SC2086
      before=$(cpu_ticks ${sut[$i]})
      out=$(WRK_STREAM=$stream wrk -t2 -c"${WRK_CONNS:-64}" -d"$dur" --timeout 10s --latency \
            ${WRK_HEADER:+-H "$WRK_HEADER"} \
            -s benches/load/chat.lua "http://${addrs[$i]}/v1/chat/completions")
      # shellcheck disable=SC2086
      after=$(cpu_ticks ${sut[$i]})
      reqs=$(echo "$out" | awk '/requests in/ {print $1}')
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      p99=$(echo "$out" | awk '$1=="99%" {print $2}')
      bad=$(echo "$out" | awk -F= '/non2xx/ {print $2}')
      read -r t0 u0 <<< "$before"; read -r t1 u1 <<< "$after"
      cpu=$(awk -v d=$((t1 - t0)) -v hz="$hz" -v n="$reqs" 'BEGIN{printf "%.1f", d/hz*1e6/n}')
      usr=$(awk -v d=$((u1 - u0)) -v hz="$hz" -v n="$reqs" 'BEGIN{printf "%.1f", d/hz*1e6/n}')
      printf '%-5s %-12s %10s %9s %12s %12s %7s\n' "$mode" "${names[$i]}" "$rps" "$p99" "$cpu" "$usr" "$bad"
    done
  done
done
