# TTA Orchestrator — `make help` lists the targets.
#
# Quick start: `make run` (whole stack locally), `make test` (everything CI runs).

SHELL := /usr/bin/env bash
CARGO ?= cargo
PROFILE ?= dev
CARGO_PROFILE_FLAG := $(if $(filter release,$(PROFILE)),--release,)

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## Install what the build and tests need (redis-server) when it is missing
	@scripts/ensure-redis.sh

.PHONY: build
build: ## Build every binary
	$(CARGO) build --workspace --bins $(CARGO_PROFILE_FLAG)

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all

.PHONY: lint
lint: ## Check formatting and clippy (warnings are errors)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

.PHONY: test
test: deps lint ## Everything CI runs: format, clippy, unit, integration and end-to-end tests
	$(CARGO) build --workspace --bins --locked
	scripts/run-tests.sh

.PHONY: run
run: deps ## Run the whole stack locally (private redis-server unless TTA_REDIS_URL is set)
	$(CARGO) build --workspace --bins $(CARGO_PROFILE_FLAG)
	PROFILE=$(PROFILE) scripts/run-stack.sh

.PHONY: demo
demo: deps ## Run the stack and play a scripted session, printing each reply and its latency
	$(CARGO) build --workspace --bins $(CARGO_PROFILE_FLAG)
	PROFILE=$(PROFILE) scripts/demo.sh

.PHONY: bench
bench: deps ## Run the benchmarks on a release build (each prints its same-run baseline and ratio)
	$(CARGO) build --release --locked -p tta-cli -p tta-broker -p tta-resource-monitor -p tta-tool-registry -p tta-gateway -p tta-agents
	target/release/tta bench broker
	target/release/tta bench turns
	target/release/tta bench safety
	target/release/tta bench monitor
	target/release/tta bench tools

.PHONY: clean
clean: ## Remove build output and local run state
	$(CARGO) clean
	rm -rf .run
