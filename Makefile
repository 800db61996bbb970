# WiPay — make targets (recipes are tab-indented).
SHELL := /bin/bash

.DEFAULT_GOAL := help
.PHONY: help run test build compose-check pin-secret clean clean-data

help: ## list the targets
	@echo "WiPay make targets:"
	@awk -F ':.*## ' '/^[a-z-]+:.*## /{ printf "  %-14s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

run: ## build, then run every service locally (var/), supervised; WIPAY_SCALE=payment-router=2,ledger=2
	bash ops/scripts/run-local.sh

test: ## build and run the tests against a throwaway PostgreSQL; TEST_ARGS="--filter X"
	bash ops/scripts/test.sh

build: ## swift build -c release
	bash ops/scripts/deps.sh
	swift build -c release

compose-check: ## install the docker-compose client if missing, validate docker-compose.yml
	bash ops/scripts/deps.sh --compose
	docker-compose config -q
	@echo "docker-compose.yml is valid"

pin-secret: ## create var/secrets/pin-secret (used by make run and by docker-compose) if missing
	@mkdir -p var/secrets && chmod 700 var/secrets
	@if [ ! -s var/secrets/pin-secret ]; then (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > var/secrets/pin-secret) && echo "created var/secrets/pin-secret"; else echo "var/secrets/pin-secret exists"; fi
	@chmod 600 var/secrets/pin-secret

clean: ## swift package clean (keeps var/: the database, logs and secrets)
	swift package clean

clean-data: ## stop the local PostgreSQL and delete var/ (database, logs, secrets)
	@if [ -f var/run-local.pid ] && kill -0 "$$(cat var/run-local.pid)" 2>/dev/null; then echo "make run is still running (pid $$(cat var/run-local.pid)); stop it first" >&2; exit 1; fi
	@if [ -f var/pg/PG_VERSION ]; then bash ops/scripts/pg.sh stop var/pg; fi
	rm -rf var
