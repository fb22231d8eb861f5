# Conduit. `make help` lists the targets.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)

# Tests and the demo use this server; pgtest creates its own databases on it.
DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable
export DATABASE_URL

SQLC := go -C tools tool sqlc
# golangci-lint must run from the module root, so it is built from tools/go.mod into bin/ (gitignored).
GOLANGCI_LINT := bin/golangci-lint

# conduitnats is a module of its own (so that users who never use NATS never get nats.go): verify, lint and
# test it too. Its tests take NATS_URL, else nats://127.0.0.1:4222 (.ci/run starts one).
NESTED_MODULES := conduitnats

.PHONY: help
help: ## List the targets.
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

.PHONY: generate
generate: ## Regenerate internal/dbgen from db/queries and db/migrations with sqlc.
	$(SQLC) generate -f ../sqlc.yaml

.PHONY: verify
verify: ## Fail if generated code, go.mod/go.sum or formatting is stale, or go vet or golangci-lint complains.
	$(SQLC) diff -f ../sqlc.yaml
	go mod tidy -diff
	go -C tools mod tidy -diff
	@for m in $(NESTED_MODULES); do echo "go -C $$m mod tidy -diff"; go -C $$m mod tidy -diff || exit 1; done
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet ./...
	@for m in $(NESTED_MODULES); do echo "go -C $$m vet ./..."; go -C $$m vet ./... || exit 1; done
	@$(MAKE) --no-print-directory lint

.PHONY: lint
lint: ## Run golangci-lint (pinned in tools/go.mod) on the root module and each nested one.
	go -C tools build -o ../$(GOLANGCI_LINT) github.com/golangci/golangci-lint/v2/cmd/golangci-lint
	$(GOLANGCI_LINT) run
	@for m in $(NESTED_MODULES); do echo "(cd $$m && ../$(GOLANGCI_LINT) run --config ../.golangci.yaml)"; \
		(cd $$m && ../$(GOLANGCI_LINT) run --config ../.golangci.yaml) || exit 1; done

.PHONY: test
test: verify ## Verify, then every test with the race detector against DATABASE_URL (and NATS), the restart test, and a two-minute soak.
	go test -race -count=1 -timeout 20m ./...
	@for m in $(NESTED_MODULES); do echo "go -C $$m test -race -count=1 ./..."; go -C $$m test -race -count=1 ./... || exit 1; done
	go test -race -count=1 -tags restart -run '^TestPostgresRestart' .
	@$(MAKE) --no-print-directory soak SOAK_DURATION=2m

.PHONY: test-short
test-short: ## Run the tests without the race detector.
	go test -count=1 ./...
	@for m in $(NESTED_MODULES); do echo "go -C $$m test -count=1 ./..."; go -C $$m test -count=1 ./... || exit 1; done

# make fuzz runs each fuzz target for FUZZTIME. New interesting inputs are minimized for at most
# FUZZMINIMIZETIME: the targets against the database would otherwise spend most of the time there.
FUZZTIME ?= 30s
FUZZMINIMIZETIME ?= 100x

.PHONY: fuzz
fuzz: ## Run each fuzz target for FUZZTIME (default 30s) against DATABASE_URL.
	@failed=; for target in $$(go test -list '^Fuzz' . | grep '^Fuzz'); do \
		echo "== $$target"; \
		go test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) . || failed="$$failed $$target"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz targets that failed:$$failed"; exit 1; fi

.PHONY: demo
demo: ## Run the demo shop against DATABASE_URL.
	go run ./cmd/conduit-demo

# The soak restarts PostgreSQL where it can (pg_ctlcluster), as the restart test does.
SOAK_DURATION ?= 2m
SOAK_RESTART ?= $(shell command -v pg_ctlcluster >/dev/null 2>&1 && echo true || echo false)

.PHONY: soak
soak: ## Run the fault-injecting soak for SOAK_DURATION (2m) against DATABASE_URL; fails if a check fails.
	go run ./internal/cmd/conduit-soak -duration $(SOAK_DURATION) -restart=$(SOAK_RESTART) $(SOAK_FLAGS)

.PHONY: soak-report
soak-report: ## Run the soak for SOAK_DURATION and put its figures into RELIABILITY.md.
	go run ./internal/cmd/conduit-soak -duration $(SOAK_DURATION) -restart=$(SOAK_RESTART) -doc RELIABILITY.md $(SOAK_FLAGS)

.PHONY: bench
bench: ## Run the benchmarks against DATABASE_URL (and NATS) and write BENCHMARKS.md.
	go run ./internal/cmd/conduit-bench -out BENCHMARKS.md
	go -C conduitnats run ./internal/cmd/relay-bench -append ../BENCHMARKS.md
