#!/usr/bin/env bash
# Makes sure `redis-server` is on PATH: tests spawn private instances of it, and `make run`
# starts one when TTA_REDIS_URL is not given. Installs Debian's package when we are allowed to.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi

echo "redis-server not found; installing it" >&2
if command -v apt-get >/dev/null 2>&1; then
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo_cmd=(sudo); else
      echo "error: run as root or install redis-server yourself (apt-get install redis-server)" >&2
      exit 1
    fi
  fi
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq redis-server >/dev/null
else
  echo "error: redis-server is required; install it with your package manager (e.g. brew install redis)" >&2
  exit 1
fi
command -v redis-server >/dev/null 2>&1 || { echo "error: redis-server still not on PATH" >&2; exit 1; }
