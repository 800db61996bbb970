# WiPay — make targets (recipes are tab-indented).
SHELL := /bin/bash

.DEFAULT_GOAL := help
.PHONY: help run test test-faults test-shop k8s-check build compose-check pin-secret payload-key curve-keys clean clean-data

help: ## list the targets
	@echo "WiPay make targets:"
	@awk -F ':.*## ' '/^[a-z-]+:.*## /{ printf "  %-14s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

run: ## build, then run every service locally (var/), supervised; WIPAY_SCALE=payment-router=2,ledger=2
	bash ops/scripts/run-local.sh

test: ## build and run the tests against a throwaway PostgreSQL; TEST_ARGS="--filter X"
	bash ops/scripts/test.sh

test-faults: ## the crash-safety fault suite (kill -9 of stages and broker, payctl drain, a PostgreSQL crash, under payment traffic; ~4 min), then its report
	@rm -f "$${TMPDIR:-/tmp}/wipay-fault-report.txt"
	@rc=0; WIPAY_FAULT_TESTS=1 bash ops/scripts/test.sh --filter FaultE2ETests || rc=$$?; \
	report="$${TMPDIR:-/tmp}/wipay-fault-report.txt"; \
	if [ -s "$$report" ]; then echo; echo "--- fault test report ($$report)"; cat "$$report"; \
	else echo "no fault test report was written (was the suite skipped?)"; [ $$rc -ne 0 ] || rc=1; fi; \
	exit $$rc

test-shop: ## only the shop across hosts: two tills, a neighbour and a phone in network namespaces (root)
	bash ops/scripts/test.sh --shop

k8s-check: ## render deploy/kubernetes (base, production) and validate every manifest offline (kubernetes-validate)
	bash ops/scripts/k8s-validate.sh

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

payload-key: ## create var/secrets/payload-key (the router's payload signing key; make run and docker-compose) if missing
	@mkdir -p var/secrets && chmod 700 var/secrets
	bash ops/scripts/deps.sh
	swift build -c release --product payctl
	@umask 077 && "$$(swift build -c release --show-bin-path)/payctl" keys payload var/secrets/payload-key
	@chmod 600 var/secrets/payload-key

curve-keys: ## create the CurveZMQ keys in var/secrets/curve (used by make run and by docker-compose) if missing
	@mkdir -p var/secrets && chmod 700 var/secrets
	bash ops/scripts/deps.sh
	swift build -c release --product payctl
	"$$(swift build -c release --show-bin-path)/payctl" keys generate --dir var/secrets/curve

clean: ## swift package clean (keeps var/: the database, logs and secrets)
	swift package clean

clean-data: ## stop the local PostgreSQL and delete var/ (database, logs, secrets)
	@if [ -f var/run-local.pid ] && kill -0 "$$(cat var/run-local.pid)" 2>/dev/null; then echo "make run is still running (pid $$(cat var/run-local.pid)); stop it first" >&2; exit 1; fi
	@if [ -f var/pg/PG_VERSION ]; then bash ops/scripts/pg.sh stop var/pg; fi
	rm -rf var
