#!/usr/bin/env bash
# `make demo`: starts the whole stack (scripts/run-stack.sh), plays a scripted session of
# several turns through the gateway with `tta turn`, printing each reply and its latency, then
# stops the stack.
set -euo pipefail

cd "$(dirname "$0")/.."
case "${PROFILE:-dev}" in
  dev) profile_dir=debug ;;
  release) profile_dir=release ;;
  *) echo "demo: unknown PROFILE '${PROFILE}' (expected dev or release)" >&2; exit 2 ;;
esac
tta="${CARGO_TARGET_DIR:-target}/${profile_dir}/tta"
log_dir=.run
mkdir -p "$log_dir"
stack_log="$log_dir/demo-stack.log"

scripts/run-stack.sh >"$stack_log" 2>&1 &
stack_pid=$!
stop_stack() {
  kill -TERM "$stack_pid" 2>/dev/null || true
  wait "$stack_pid" 2>/dev/null || true
}
trap stop_stack EXIT INT TERM

# The stack prints its endpoint table once every service is ready.
for _ in $(seq 1 300); do
  if grep -q "press Ctrl-C" "$stack_log" 2>/dev/null; then break; fi
  if ! kill -0 "$stack_pid" 2>/dev/null; then
    echo "demo: the stack did not start:" >&2
    tail -n 30 "$stack_log" >&2
    exit 1
  fi
  sleep 0.1
done
grep -q "press Ctrl-C" "$stack_log" || { echo "demo: the stack did not become ready in 30 s" >&2; tail -n 30 "$stack_log" >&2; exit 1; }

session="demo-$(date +%s)"
script=(
  "look around"
  "i feel a bit tired today"
  "go south"
  "take the lantern"
  "inventory"
  "go north"
  "go east"
  "talk to mara"
  "breathe"
  "help"
)
echo "scripted session $session"
for line in "${script[@]}"; do
  echo
  echo "> $line"
  "$tta" turn --session "$session" --user demo-player "$line" || echo "  (the turn failed)"
done
