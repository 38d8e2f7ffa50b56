#!/usr/bin/env bash
# Side by side on this machine, in one run: wrk -> {mock directly, nginx,
# tollgate, tollgate without prompt counting, tollgate with API keys and
# limits on} -> the same mock. Prints req/s, latency and CPU microseconds
# per request of the system under test (utime+stime from /proc, all
# threads). Loopback only; every wrk run is bounded by -d.
#
#   benches/load/quick.sh [reps=3] [duration=8s] [connections=64] [workers=1]
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/load/config.sh
reps=${1:-3}; dur=${2:-8s}; conns=${3:-64}; workers=${4:-1}
bin=target/release/tollgate
[ -x "$bin" ] || cargo build --release -p tollgate --bin tollgate
command -v wrk >/dev/null && command -v nginx >/dev/null || {
  echo "needs wrk and nginx: apt-get install -y wrk nginx-light" >&2; exit 1; }
dir=$(mktemp -d /tmp/tollgate-quick.XXXX)
MOCK=127.0.0.1:19001 NGINX=127.0.0.1:19101 TG=127.0.0.1:19201 LEAN=127.0.0.1:19202 AUTH=127.0.0.1:19203
# Every system gets the same Authorization header; only tg-auth checks it.
export WRK_KEY=tg-bench-0123456789abcdef0123456789abcdef
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done;
  [ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true; }
trap cleanup EXIT

cores=$(nproc)
pin=$(( cores > 1 ? cores - 1 : 0 ))
$bin mock --listen $MOCK --workers 1 --pin-cpu $pin 2>"$dir/mock.log" & pids+=($!)
tollgate_config "$dir/tollgate.toml" "$TG" "$MOCK" "$workers"
$bin serve --config "$dir/tollgate.toml" 2>"$dir/tollgate.log" & tg_pid=$!; pids+=($tg_pid)
# The same gateway with token accounting reduced to what the provider
# reports (no prompt estimate, no usage injection): the cost of counting.
sed -e "s|listen = \"$TG\"|listen = \"$LEAN\"|" -e 's|^name = "gpt-4o-mini"|name = "gpt-4o-mini"\ntokenizer = "none"|' \
    -e 's|^base_url = \(.*\)|base_url = \1\nstream_usage = false|' "$dir/tollgate.toml" > "$dir/lean.toml"
$bin serve --config "$dir/lean.toml" 2>"$dir/lean.log" & lean_pid=$!; pids+=($lean_pid)
# The same gateway with a key, tenant limits (requests and tokens per
# minute, a monthly token budget) and admission/settlement on every request.
key_sha=$(printf '%s' "$WRK_KEY" | sha256sum | cut -d' ' -f1)
sed -e "s|listen = \"$TG\"|listen = \"$AUTH\"|" "$dir/tollgate.toml" > "$dir/auth.toml"
cat >> "$dir/auth.toml" <<CFG
[[keys]]
id = "bench"
tenant = "bench"
key_sha256 = "$key_sha"
limits = { rpm = 100000000, tpm = 100000000000 }
[[tenants]]
id = "bench"
limits = { rpm = 100000000, budget_tokens = 100000000000, budget_period = "month" }
CFG
$bin serve --config "$dir/auth.toml" 2>"$dir/auth.log" & auth_pid=$!; pids+=($auth_pid)
sed -e "s|@WORKERS@|$workers|; s|@DIR@|$dir|g; s|@UPSTREAM@|$MOCK|; s|@LISTEN@|$TG|" \
  benches/load/nginx.conf.in | sed -e "s|listen $TG|listen $NGINX|" > "$dir/nginx.conf"
nginx -p "$dir" -c "$dir/nginx.conf"
for a in $MOCK $NGINX $TG $LEAN $AUTH; do
  for _ in $(seq 100); do curl -s -o /dev/null -H "Authorization: Bearer $WRK_KEY" "http://$a/v1/models" && break; sleep 0.05; done
done
nginx_pids() { local m; m=$(cat "$dir/nginx.pid"); echo "$m $(pgrep -P "$m" | tr '\n' ' ')"; }
cpu_ticks() { local t=0; for p in "$@"; do
  for s in /proc/"$p"/task/*/stat; do set -- $(sed 's/.*) //' "$s"); t=$((t + ${12} + ${13})); done; done; echo $t; }
hz=$(getconf CLK_TCK)

printf '%-6s %-9s %10s %9s %9s %12s %7s\n' mode system req/s p50 p99 cpu_us/req non2xx
for rep in $(seq "$reps"); do
  for mode in json sse; do
    stream=0; [ $mode = sse ] && stream=1
    for sys in direct nginx tollgate tg-lean tg-auth; do
      case $sys in direct) addr=$MOCK; p="";; nginx) addr=$NGINX; p=$(nginx_pids);;
        tollgate) addr=$TG; p=$tg_pid;; tg-lean) addr=$LEAN; p=$lean_pid;;
        tg-auth) addr=$AUTH; p=$auth_pid;; esac
      before=0; [ -n "$p" ] && before=$(cpu_ticks $p)
      out=$(WRK_STREAM=$stream wrk -t2 -c"$conns" -d"$dur" --timeout 10s --latency \
            -s benches/load/chat.lua "http://$addr/v1/chat/completions")
      after=0; [ -n "$p" ] && after=$(cpu_ticks $p)
      reqs=$(echo "$out" | awk '/requests in/ {print $1}')
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      p50=$(echo "$out" | awk '$1=="50%" {print $2}')
      p99=$(echo "$out" | awk '$1=="99%" {print $2}')
      bad=$(echo "$out" | awk -F= '/non2xx/ {print $2}')
      cpu="-"; [ -n "$p" ] && cpu=$(awk -v d=$((after-before)) -v hz=$hz -v n="$reqs" 'BEGIN{printf "%.1f", d/hz*1e6/n}')
      printf '%-6s %-9s %10s %9s %9s %12s %7s\n' $mode $sys "$rps" "$p50" "$p99" "$cpu" "$bad"
    done
  done
done
