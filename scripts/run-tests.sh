#!/usr/bin/env bash
# Runs every test of the workspace: unit tests beside the code, integration tests per crate
# against private redis-server instances, and the end-to-end tests in tests/ that start the
# real binaries (built beforehand by `make test`).
set -euo pipefail

if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doc tests; run them first so the summary of the full suite comes last.
  cargo test --workspace --locked --doc
  cargo nextest run --workspace --locked --no-fail-fast --failure-output final
else
  cargo test --workspace --locked --no-fail-fast
fi
