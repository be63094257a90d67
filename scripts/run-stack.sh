#!/usr/bin/env bash
# Runs the whole TTA stack locally from the built binaries (`make run` builds them first): a
# private redis-server unless a Redis is configured, the four gRPC services and the three agent
# workers, each in the background with its log in .run/logs/<binary>.log. Waits until every
# process is ready, prints the endpoints, and runs until Ctrl-C (SIGINT) or SIGTERM; then it
# sends SIGTERM to every process it started and waits for them to exit.
#
# Environment:
#   PROFILE        cargo profile the binaries were built with: dev (default) or release
#   TTA_CONFIG     YAML configuration file handed to every service with --config
#   TTA_REDIS_URL  use this Redis instead of starting a private redis-server (so does a
#                  redis.url other than the default in the TTA_CONFIG file)
#   TTA_<KEY>      any configuration key, `__` nests: TTA_BROKER__VISIBILITY_TIMEOUT=10s
#   READY_TIMEOUT  seconds to wait for the stack to become ready (default 30)
#   NO_COLOR       log colouring; set to 1 for the services unless already set, so the log
#                  files stay plain text
#
# Exit codes: 0 after a clean stop, 1 when a process fails to start or dies while running,
# 2 for a bad configuration.
set -euo pipefail

if [ -z "${BASH_VERSINFO:-}" ] || [ "${BASH_VERSINFO[0]}" -lt 4 ] ||
  { [ "${BASH_VERSINFO[0]}" -eq 4 ] && [ "${BASH_VERSINFO[1]}" -lt 3 ]; }; then
  echo "run-stack: bash 4.3 or newer is required" >&2
  exit 1
fi

cd "$(dirname "$0")/.."

case "${PROFILE:-dev}" in
  dev | debug) profile_dir=debug ;;
  release) profile_dir=release ;;
  *)
    echo "run-stack: unknown PROFILE '${PROFILE}' (expected dev or release)" >&2
    exit 2
    ;;
esac
bin_dir="${CARGO_TARGET_DIR:-target}/${profile_dir}"
run_dir=.run
log_dir="$run_dir/logs"
ready_timeout="${READY_TIMEOUT:-30}"
# The built-in default of redis.url: when the effective configuration still has it, no Redis
# was configured and a private one is started.
default_redis_url="redis://127.0.0.1:6379"
# Ports tried for the private redis-server, first to last.
redis_ports=(6390 6391 6392 6393 6394 6395 6396 6397 6398 6399)

# Start order: the broker and the registries first, then the gateway that calls them, then the
# workers that consume from the broker.
services=(tta-broker tta-tool-registry tta-resource-monitor tta-gateway tta-ipa tta-wba tta-nga)
# The endpoint table lists the public entry point first.
display_order=(tta-gateway tta-broker tta-tool-registry tta-resource-monitor tta-ipa tta-wba tta-nga)
# The configuration section that holds each service's addresses.
declare -A grpc_key=(
  [tta-gateway]=gateway.listen.grpc
  [tta-broker]=broker.listen.grpc
  [tta-tool-registry]=tools.listen.grpc
  [tta-resource-monitor]=resource_monitor.listen.grpc
)
declare -A admin_key=(
  [tta-gateway]=gateway.listen.admin
  [tta-broker]=broker.listen.admin
  [tta-tool-registry]=tools.listen.admin
  [tta-resource-monitor]=resource_monitor.listen.admin
  [tta-ipa]=agents.ipa.admin
  [tta-wba]=agents.wba.admin
  [tta-nga]=agents.nga.admin
)

declare -A pids=()
redis_pid=""
health_pid=""
stopping=0

say() { printf 'run-stack: %s\n' "$*"; }
fail() { printf 'run-stack: error: %s\n' "$*" >&2; }

# --- stopping --------------------------------------------------------------------------------

# Whether `pid` is still running (a zombie, exited but not yet reaped, is not).
running() {
  local state
  state=$(ps -p "$1" -o stat= 2>/dev/null) || return 1
  [[ $state != Z* ]]
}

# Waits up to `seconds` for `pid`, already sent SIGTERM, to exit, then SIGKILLs it. Prints how
# it ended; returns non-zero when it did not exit cleanly.
await_exit() {
  local name=$1 pid=$2 seconds=$3 status=0 deadline
  deadline=$((SECONDS + seconds))
  while running "$pid" && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.1
  done
  if running "$pid"; then
    fail "$name did not stop within ${seconds}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || status=$?
  # 143 (128 + SIGTERM): a process that died of the signal we sent stopped as asked.
  if [ "$status" -eq 0 ] || [ "$status" -eq 143 ]; then
    printf '  stopped %-22s exit %s\n' "$name" "$status"
    return 0
  fi
  # bash sometimes loses the status of a child reaped while a trap runs (wait answers -1 or
  # 127); the process is gone, and its log says how it ended.
  if [ "$status" -eq -1 ] || [ "$status" -eq 127 ]; then
    printf '  stopped %-22s exit status not available (see %s)\n' "$name" "$(log_file "$name")"
    return 0
  fi
  printf '  stopped %-22s exit %s (see %s)\n' "$name" "$status" "$(log_file "$name")"
  return 1
}

stop_all() {
  local clean=0 name
  if [ -n "$health_pid" ]; then
    kill -TERM "$health_pid" 2>/dev/null || true
    wait "$health_pid" 2>/dev/null || true
    health_pid=""
  fi
  if [ "${#pids[@]}" -gt 0 ]; then
    say "stopping the services"
    # Signal every service at once so they drain in parallel, then collect each one.
    for name in "${!pids[@]}"; do kill -TERM "${pids[$name]}" 2>/dev/null || true; done
    for name in "${services[@]}"; do
      [ -n "${pids[$name]:-}" ] || continue
      await_exit "$name" "${pids[$name]}" 10 || clean=1
      unset "pids[$name]"
    done
  fi
  # Redis goes last: the services may still talk to it while they drain.
  if [ -n "$redis_pid" ]; then
    kill -TERM "$redis_pid" 2>/dev/null || true
    await_exit redis-server "$redis_pid" 10 || clean=1
    redis_pid=""
  fi
  return "$clean"
}

on_exit() {
  local status=$?
  # Further signals are ignored while stopping: the same Ctrl-C or SIGTERM often arrives twice
  # (directly and relayed by make), and the stop is bounded by await_exit anyway.
  trap '' INT TERM
  trap - EXIT
  if ! stop_all; then
    [ "$status" -ne 0 ] || status=1
  fi
  if [ "$stopping" -eq 1 ] && [ "$status" -eq 0 ]; then
    say "stopped"
  fi
  exit "$status"
}

on_signal() {
  trap '' INT TERM
  stopping=1
  printf '\n'
  say "$1 received"
  exit 0
}

trap on_exit EXIT
trap 'on_signal SIGINT' INT
trap 'on_signal SIGTERM' TERM

# --- helpers ---------------------------------------------------------------------------------

log_file() { printf '%s/%s.log' "$log_dir" "$1"; }

# Flattens the YAML that --dump-config prints into `dotted.key=value` lines.
flatten_yaml() {
  awk '
    {
      match($0, /^ */)
      indent = RLENGTH
      line = substr($0, indent + 1)
      if (line == "" || line ~ /^#/ || line ~ /^- /) next
      key = line; sub(/:.*/, "", key)
      value = line; sub(/^[^:]*:[ ]?/, "", value)
      depth = indent / 2
      path[depth] = key
      full = path[0]
      for (i = 1; i <= depth; i++) full = full "." path[i]
      gsub(/^["'\'']|["'\'']$/, "", value)
      if (value != "") print full "=" value
    }'
}

config_value() {
  local key=$1 line
  line=$(grep -m1 "^${key//./\\.}=" <<<"$effective_config" || true)
  printf '%s' "${line#*=}"
}

# The address to connect to for a listen address: a wildcard host means this machine.
connect_addr() {
  local addr=$1
  addr=${addr/#0.0.0.0:/127.0.0.1:}
  addr=${addr/#\[::\]:/[::1]:}
  printf '%s' "$addr"
}

host_of() { local addr=$1; addr=${addr%:*}; addr=${addr#[}; printf '%s' "${addr%]}"; }
port_of() { printf '%s' "${1##*:}"; }

# Whether something accepts TCP connections on host:port.
port_open() {
  local host port
  host=$(host_of "$1")
  port=$(port_of "$1")
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

# The HTTP status of GET http://<addr><path>, or 000 when nothing answers.
http_status() {
  local addr=$1 path=$2
  if command -v curl >/dev/null 2>&1; then
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$addr$path" 2>/dev/null || true
    return 0
  fi
  local host port reply
  host=$(host_of "$addr")
  port=$(port_of "$addr")
  reply=$(
    exec 3<>"/dev/tcp/$host/$port" || exit 0
    printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$addr" >&3
    timeout 2 head -n1 <&3
  ) 2>/dev/null || true
  reply=${reply#HTTP/1.1 }
  printf '%s' "${reply:0:3}"
  [ -n "$reply" ] || printf '000'
}

# Reports a service that exited on its own and ends the script: a clean exit means it was asked
# to stop (Ctrl-C reaches the whole process group, and a script started in the background
# ignores SIGINT itself), so the stack stops cleanly; anything else is a failure.
service_exited() {
  local name=$1 status=$2 when=$3
  if [ "$status" -eq 0 ]; then
    stopping=1
    say "$name stopped (exit 0); stopping the stack"
    exit 0
  fi
  fail "$name exited $when (exit $status)"
  show_log_tail "$name"
  exit 1
}

show_log_tail() {
  local name=$1 file
  file=$(log_file "$name")
  fail "last lines of $file:"
  tail -n 30 "$file" >&2 2>/dev/null || true
}

# --- preflight -------------------------------------------------------------------------------

for binary in "${services[@]}" tta; do
  if [ ! -x "$bin_dir/$binary" ]; then
    fail "$bin_dir/$binary is missing; build it with 'make build' (or run 'make run')"
    exit 1
  fi
done

config_args=()
if [ -n "${TTA_CONFIG:-}" ]; then
  config_args=(--config "$TTA_CONFIG")
fi
# The example workflows, unless the configuration names its own file.
if [ -z "${TTA_CONFIG:-}" ] && [ -z "${TTA_GATEWAY__WORKFLOWS_FILE:-}" ]; then
  export TTA_GATEWAY__WORKFLOWS_FILE="$PWD/deploy/workflows/example.yaml"
fi

# Seven processes share this host: each does best with a single-threaded runtime (see
# server.worker_threads), unless the configuration says otherwise.
if [ -z "${TTA_CONFIG:-}" ] && [ -z "${TTA_SERVER__WORKER_THREADS:-}" ]; then
  export TTA_SERVER__WORKER_THREADS=1
fi

# Every service reads the same chain (defaults, file, TTA_ environment); the broker's dump of it
# validates the configuration once, up front, and tells us where everything will listen.
if ! dumped=$("$bin_dir/tta-broker" "${config_args[@]}" --dump-config 2>&1); then
  fail "the configuration is invalid:"
  printf '%s\n' "$dumped" >&2
  exit 2
fi
effective_config=$(flatten_yaml <<<"$dumped")

mkdir -p "$log_dir"
export NO_COLOR="${NO_COLOR:-1}"

# Refuse to start on ports that are taken, naming the setting that moves them.
busy=0
for name in "${services[@]}"; do
  for key in ${grpc_key[$name]:-} "${admin_key[$name]}"; do
    addr=$(config_value "$key")
    [ "$(port_of "$addr")" != 0 ] || continue
    if port_open "$(connect_addr "$addr")"; then
      env_name="TTA_$(tr '[:lower:]' '[:upper:]' <<<"${key//./__}")"
      fail "$addr ($key) is already in use; stop what listens there or move $name with $env_name=HOST:PORT"
      busy=1
    fi
  done
done
[ "$busy" -eq 0 ] || exit 1

# --- redis -----------------------------------------------------------------------------------

configured_redis=$(config_value redis.url)
redis_note=""
if [ -z "${TTA_REDIS_URL:-}" ] && [ -z "${TTA_REDIS__URL:-}" ] &&
  [ "$configured_redis" = "$default_redis_url" ]; then
  if ! command -v redis-server >/dev/null 2>&1; then
    fail "redis-server is not installed; run 'make deps' or set TTA_REDIS_URL to a running Redis"
    exit 1
  fi
  redis_port=""
  for port in "${redis_ports[@]}"; do
    if ! port_open "127.0.0.1:$port"; then
      redis_port=$port
      break
    fi
  done
  if [ -z "$redis_port" ]; then
    fail "no free port for the private redis-server among ${redis_ports[*]}; set TTA_REDIS_URL"
    exit 1
  fi
  mkdir -p "$run_dir/redis"
  say "starting a private redis-server on 127.0.0.1:$redis_port"
  redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$run_dir/redis" \
    --save "" --appendonly no --daemonize no --logfile "" \
    >"$(log_file redis-server)" 2>&1 &
  redis_pid=$!
  deadline=$((SECONDS + 10))
  until port_open "127.0.0.1:$redis_port"; do
    if ! kill -0 "$redis_pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
      fail "the private redis-server did not start"
      show_log_tail redis-server
      exit 1
    fi
    sleep 0.1
  done
  export TTA_REDIS_URL="redis://127.0.0.1:$redis_port"
  redis_display=$TTA_REDIS_URL
  redis_note="private, data in $run_dir/redis, log $(log_file redis-server)"
else
  redis_display=$configured_redis
  redis_note="configured"
fi

# --- services --------------------------------------------------------------------------------

for name in "${services[@]}"; do
  "$bin_dir/$name" "${config_args[@]}" >"$(log_file "$name")" 2>&1 &
  pids[$name]=$!
done
say "started ${#services[@]} services; waiting up to ${ready_timeout}s for them to become ready"

# gRPC health of the four gRPC services, checked by the CLI in the background while we poll
# every admin /ready (Redis reachable, accepting work) and watch for processes that die.
health_output="$run_dir/health.txt"
"$bin_dir/tta" "${config_args[@]}" health --wait "${ready_timeout}s" >"$health_output" 2>&1 &
health_pid=$!

declare -A ready=()
deadline=$((SECONDS + ready_timeout))
while [ "${#ready[@]}" -lt "${#services[@]}" ]; do
  for name in "${services[@]}"; do
    [ -z "${ready[$name]:-}" ] || continue
    if ! running "${pids[$name]}"; then
      status=0
      wait "${pids[$name]}" 2>/dev/null || status=$?
      unset "pids[$name]"
      service_exited "$name" "$status" "during start-up"
    fi
    admin=$(connect_addr "$(config_value "${admin_key[$name]}")")
    if [ "$(http_status "$admin" /ready)" = 200 ]; then
      ready[$name]=1
    fi
  done
  [ "${#ready[@]}" -lt "${#services[@]}" ] || break
  if [ "$SECONDS" -ge "$deadline" ]; then
    for name in "${services[@]}"; do
      [ -z "${ready[$name]:-}" ] || continue
      admin=$(connect_addr "$(config_value "${admin_key[$name]}")")
      fail "$name is not ready after ${ready_timeout}s (GET http://$admin/ready)"
      curl -s --max-time 2 "http://$admin/ready" >&2 2>/dev/null && echo >&2 || true
      show_log_tail "$name"
    done
    exit 1
  fi
  sleep 0.2
done

health_status=0
wait "$health_pid" || health_status=$?
health_pid=""
if [ "$health_status" -ne 0 ]; then
  fail "grpc health checks failed:"
  cat "$health_output" >&2
  exit 1
fi

# --- the endpoints ---------------------------------------------------------------------------

gateway_admin=$(connect_addr "$(config_value gateway.listen.admin)")
echo
say "the stack is ready (profile ${PROFILE:-dev}, binaries in $bin_dir)"
echo
printf '  %-22s %-22s %-34s %s\n' "service" "grpc" "admin http" "log"
for name in "${display_order[@]}"; do
  grpc="-"
  if [ -n "${grpc_key[$name]:-}" ]; then grpc=$(config_value "${grpc_key[$name]}"); fi
  admin=$(connect_addr "$(config_value "${admin_key[$name]}")")
  printf '  %-22s %-22s %-34s %s\n' "$name" "$grpc" "http://$admin" "$(log_file "$name")"
done
echo
echo "  every admin address serves /health, /ready and /metrics (prometheus text)"
echo "  gateway diagnostics:  http://$gateway_admin/diagnostics"
echo "  redis:                $redis_display ($redis_note)"
echo "  grpc health:          $bin_dir/tta health"
echo
sed 's/^/  /' "$health_output"
echo
say "press Ctrl-C to stop"

# --- run until a signal or a failure ----------------------------------------------------------

while :; do
  # Returns when a child exits; a trapped signal interrupts it and runs on_signal.
  wait -n || true
  for name in "${services[@]}"; do
    pid=${pids[$name]:-}
    [ -n "$pid" ] || continue
    if ! running "$pid"; then
      status=0
      wait "$pid" 2>/dev/null || status=$?
      unset "pids[$name]"
      service_exited "$name" "$status" "unexpectedly"
    fi
  done
  if [ -n "$redis_pid" ] && ! running "$redis_pid"; then
    status=0
    wait "$redis_pid" 2>/dev/null || status=$?
    redis_pid=""
    service_exited redis-server "$status" "unexpectedly"
  fi
done
