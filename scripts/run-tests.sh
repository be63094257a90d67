#!/usr/bin/env bash
# Runs every test of the workspace: unit tests beside the code, integration tests per crate
# against private redis-server instances, and the end-to-end tests in tests/ that start the
# real binaries (built beforehand by `make test`).
set -euo pipefail

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --failure-output final
  # nextest does not run doc tests.
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked --no-fail-fast
fi
