# Sourced by the A/B scripts (quick.sh, variants.sh, instructions.sh): the
# one tollgate config they all run, so their figures stay comparable.
#
#   tollgate_config FILE LISTEN MOCK [WORKERS] [SERVER_LINES]
#
# One `mock` upstream (the pool's default 256 idle connections), one
# model `gpt-4o-mini` routed to it, warn-level logs without the access
# log; SERVER_LINES are extra `[server]` lines, `;`-separated.
tollgate_config() {
  local extra=${5:-}
  cat > "$1" <<CFG
[server]
listen = "$2"
workers = ${4:-1}
${extra//;/$'\n'}
[log]
level = "warn"
access = false
[[upstreams]]
name = "mock"
base_url = "http://$3/v1"
[[models]]
name = "gpt-4o-mini"
targets = [{ upstream = "mock" }]
CFG
}
