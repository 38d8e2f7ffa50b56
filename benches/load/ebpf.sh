#!/usr/bin/env bash
# eBPF on vs off, side by side in one run: wrk -> {tollgate [ebpf] off,
# tollgate [ebpf] on} -> the same mock, interleaved; req/s, p99 and CPU
# microseconds per request (utime+stime of the gateway, all threads, from
# /proc). Then the signal delay: a gateway with eBPF on whose model's
# primary is a closed port (breaker off, fallback to the mock), so every
# request makes the kernel refuse a connect; its
# tollgate_ebpf_signal_delay_seconds histogram (kernel event -> breaker
# decision) gives p50/p99 as bucket bounds. Needs root (or the
# capabilities in tuning/ebpf.md). Loopback only; every run bounded by -d.
#
#   benches/load/ebpf.sh [reps=3] [duration=6s] [connections=32]
set -euo pipefail
cd "$(dirname "$0")/../.."
reps=${1:-3}; dur=${2:-6s}; conns=${3:-32}
bin=target/release/tollgate
[ -x "$bin" ] || cargo build --release -p tollgate --bin tollgate
command -v wrk >/dev/null || { echo "needs wrk: apt-get install -y wrk" >&2; exit 1; }
dir=$(mktemp -d /tmp/tollgate-ebpf.XXXX)
MOCK=127.0.0.1:19301 OFF=127.0.0.1:19311 ON=127.0.0.1:19312 SIG=127.0.0.1:19313 SIGADM=127.0.0.1:19323
DEAD=127.0.0.1:19399
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

cores=$(nproc)
pin=$(( cores > 1 ? cores - 1 : 0 ))
$bin mock --listen $MOCK --workers 1 --pin-cpu $pin 2>"$dir/mock.log" & pids+=($!)
conf() { # listen mode [extra]
  local extra=${3:-}
  cat <<CFG
[server]
listen = "$1"
workers = 1
$extra
[log]
level = "warn"
access = false
[ebpf]
enabled = "$2"
[[upstreams]]
name = "mock"
base_url = "http://$MOCK/v1"
[[upstreams]]
name = "dead"
base_url = "http://$DEAD/v1"
[[models]]
name = "gpt-4o-mini"
targets = [{ upstream = "mock" }]
[[models]]
name = "dead"
targets = [{ upstream = "dead" }]
breaker = { max_failures = 0 }
fallbacks = [{ model = "gpt-4o-mini" }]
CFG
}
conf $OFF off > "$dir/off.toml"; conf $ON on > "$dir/on.toml"
conf $SIG on "admin_listen = \"$SIGADM\"" > "$dir/sig.toml"
$bin serve --config "$dir/off.toml" 2>"$dir/off.log" & off_pid=$!; pids+=($off_pid)
$bin serve --config "$dir/on.toml" 2>"$dir/on.log" & on_pid=$!; pids+=($on_pid)
for a in $MOCK $OFF $ON; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://$a/v1/models" && break; sleep 0.05; done
done
cpu_ticks() { local t=0; for s in /proc/"$1"/task/*/stat; do
  set -- $(sed 's/.*) //' "$s"); t=$((t + ${12} + ${13})); done; echo $t; }
hz=$(getconf CLK_TCK)

echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-5s %-5s %10s %9s %12s %7s\n' mode ebpf req/s p99 cpu_us/req non2xx
for rep in $(seq "$reps"); do
  for mode in json sse; do
    stream=0; [ $mode = sse ] && stream=1
    for sys in off on; do
      case $sys in off) addr=$OFF; p=$off_pid;; on) addr=$ON; p=$on_pid;; esac
      before=$(cpu_ticks $p)
      out=$(WRK_STREAM=$stream wrk -t1 -c"$conns" -d"$dur" --timeout 10s --latency \
            -s benches/load/chat.lua "http://$addr/v1/chat/completions")
      after=$(cpu_ticks $p)
      reqs=$(echo "$out" | awk '/requests in/ {print $1}')
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      p99=$(echo "$out" | awk '$1=="99%" {print $2}')
      bad=$(echo "$out" | awk -F= '/non2xx/ {print $2}')
      cpu=$(awk -v d=$((after-before)) -v hz=$hz -v n="$reqs" 'BEGIN{printf "%.2f", d/hz*1e6/n}')
      printf '%-5s %-5s %10s %9s %12s %7s\n' $mode $sys "$rps" "$p99" "$cpu" "$bad"
    done
  done
done
kill $off_pid $on_pid 2>/dev/null || true

# Signal delay: every request's first attempt is refused by the kernel.
$bin serve --config "$dir/sig.toml" 2>"$dir/sig.log" & pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://$SIG/v1/models" && break; sleep 0.05; done
cat > "$dir/dead.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"dead","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}'
function done(summary) io.write(string.format("non2xx=%d\n", summary.errors.status)) end
LUA
echo "signal delay ($(cut -d' ' -f1-3 /proc/loadavg)):"
wrk -t1 -c4 -d"$dur" -s "$dir/dead.lua" "http://$SIG/v1/chat/completions" | grep -E "requests in|non2xx"
sleep 0.5
curl -s "http://$SIGADM/metrics" > "$dir/sig.metrics"
grep -E '^tollgate_upstream_tcp_events_total\{upstream="dead",kind="refused"\}' "$dir/sig.metrics"
awk -F'[{}" ]+' '
  /^tollgate_ebpf_signal_delay_seconds_bucket/ { le[n]=$3; c[n]=$NF; n++ }
  /^tollgate_ebpf_signal_delay_seconds_sum/ { sum=$NF }
  /^tollgate_ebpf_signal_delay_seconds_count/ { cnt=$NF }
  END {
    if (cnt == 0) { print "no samples"; exit 1 }
    for (i = 0; i < n; i++) {
      if (p50 == "" && c[i] >= 0.5 * cnt) p50 = le[i]
      if (p99 == "" && c[i] >= 0.99 * cnt) p99 = le[i]
    }
    printf "samples=%d mean=%.1fus p50<=%ss p99<=%ss\n", cnt, sum / cnt * 1e6, p50, p99
  }' "$dir/sig.metrics"
