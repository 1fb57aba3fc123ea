# The recipes are exactly what CI (.ci/run) runs; `make` lists them.

.PHONY: help fmt lint test packages check demo

help: ## list the recipes
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

fmt: ## cargo fmt --check
	cargo fmt --all --check

lint: ## clippy with warnings as errors
	cargo clippy --locked --all-targets -- -D warnings

test: ## the whole test suite (README's test command)
	scripts/test.sh

packages: ## Dockerfile lint, .deb and .rpm built and checked, the .deb under systemd
	packaging/check-docker.sh
	packaging/build.sh
	packaging/check.sh
	packaging/check-systemd.sh

check: ## everything CI runs
	.ci/run

demo: ## a whole tunnel on this machine (README's first command)
	scripts/demo.sh
