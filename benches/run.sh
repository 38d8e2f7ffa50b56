#!/usr/bin/env bash
# The side-by-side load harness in one command: builds tollgate and the load
# generator (release), runs the scenarios against every installed system,
# writes benches/results/<date>-<scenario>.json, <date>.md and the plots.
#
#   benches/setup.sh                 # once: nginx, nginx+lua, envoy, litellm, matplotlib
#   benches/run.sh                   # everything (~15 min on 2 cores)
#   benches/run.sh --scenario sse --systems direct,tollgate,nginx --reps 5
#   benches/run.sh --smoke           # CI: seconds, low load, fails on any error
#
# Every other flag goes to benches/load/bench.py (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=0
for a in "$@"; do [ "$a" = "--smoke" ] && smoke=1; done
if [ $smoke = 1 ]; then
  # Checks that the harness works and the numbers are sane, not speed: the
  # debug build the tests already made is enough (dependencies optimised).
  cargo build --locked -q -p tollgate --bin tollgate -p tollgate-benches --bin loadgen --bin floor
  exec python3 benches/load/bench.py --bin-dir target/debug --scenario forward,sse \
    --systems direct,tollgate,floor,nginx --reps 1 --duration 1 --concurrency 4 \
    --no-open-loop --no-sweep "$@"
fi
cargo build --release --locked -q -p tollgate --bin tollgate -p tollgate-benches --bin loadgen --bin floor
python3 benches/load/bench.py "$@"
py=target/bench-venv/bin/python
if [ -x "$py" ] && "$py" -c 'import matplotlib' 2>/dev/null; then
  tag=""
  for a in "$@"; do case $a in --tag=*) tag=${a#--tag=};; esac; done
  "$py" benches/load/plot.py benches/results "$tag"
else
  echo "plots skipped: no matplotlib (run benches/setup.sh)" >&2
fi
