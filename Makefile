# sagapipe: the two commands that matter are `make run` and `make test`.
GO ?= go
SHELL := /bin/bash

# Jaeger, built once from the Go module proxy by the tools module in
# internal/tools/jaeger and cached outside the repository.
JAEGER_VERSION := v1.76.0
JAEGER_BIN ?= $(or $(SAGAPIPE_JAEGER_BIN),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/sagapipe/jaeger-$(JAEGER_VERSION))
JAEGER_CONFIG := internal/tools/jaeger/config.yaml
TRACED_DIR := .data/traced

# staticcheck, pinned by the tools module in internal/tools/staticcheck (its
# go.sum is committed) and built once into the same cache.
STATICCHECK_VERSION := v0.8.2
STATICCHECK_BIN ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/sagapipe/staticcheck-$(STATICCHECK_VERSION)

.PHONY: run run-traced test test-short chaos deploy-check bench bench-profile bench-temporal lint staticcheck-build dev jaeger jaeger-build jaeger-stop

## run: the orders saga demo on the embedded Kafka and Schema Registry (no setup)
run:
	$(GO) run ./cmd/orchestrator demo

## test: every test against the embedded Kafka and registry (and a live Jaeger), with the race detector;
## -short leaves out the chaos scenarios (make chaos)
test: jaeger-build
	SAGAPIPE_JAEGER_BIN="$(JAEGER_BIN)" $(GO) test -race -short -count=1 -timeout 14m ./...

## test-short: the fast tests, in under 2 minutes: -short, no race detector, no vet (make lint), and without the tests that need
## PostgreSQL, Python, Jaeger, Chromium or a Docker toolchain or take more than about 5 s (listed below; make test runs them)
FAST_EXCLUDED_PACKAGES := /outbox$$|/examples/pgpayment$$|/internal/e2e$$
FAST_SKIPPED_TESTS := TestCrash.* TestDockerfileBuildsAStaticNonRootImage TestBenchWritesResults TestDemoWithSlowParticipants \
	TestTracesMetricsAndLogsEndToEnd TestServiceRidesThroughABrokerRestart TestConsoleInBrowser TestStoreIngestEqualsWrite \
	TestMigrationFromAJournalOnlyDeployment TestASagasTraceHasTheSagasShape TestClosedSagasLeaveMemoryAndIgnoreLateEventsAfterRecovery \
	TestARestoreDoesNotHoldUpTheOtherPartitions TestStageWorkerRidesThroughABrokerRestart TestTransactionalDispatchSurvivesKill9 \
	TestTransactionalRetryRewinds TestTripsAndOrdersInOneService TestDemoKeepsItsInvariants TestPostgresStartsAndStops
empty :=
space := $(empty) $(empty)
test-short:
	$(GO) test -short -count=1 -vet=off -timeout 5m -skip '^($(subst $(space),|,$(strip $(FAST_SKIPPED_TESTS))))$$' \
		$$($(GO) list ./... | grep -Ev '$(FAST_EXCLUDED_PACKAGES)')

## chaos: the chaos scenarios, each part in its own process on a persistent dev stack
## (broker kill -9, network faults, registry outage, orchestrator kill -9s, garbage in the inbox); a table at the end
chaos:
	$(GO) test -count=1 -timeout 15m -run '^TestChaos' -v ./cmd/orchestrator/

## deploy-check: lint and render the Helm chart, check the Compose stack (a Go module of its own in deploy/)
deploy-check:
	cd deploy && $(GO) test -count=1 ./...

## bench: micro-benchmarks of the hot paths, then the harness (`orchestrator bench`):
## saga throughput and latency, the kgo ceiling, in-flight memory; figures in the README
bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 3 ./schema/ ./pipe/ ./saga/
	$(GO) run ./cmd/orchestrator bench --out bench-results.json

## bench-profile: allocation and CPU profiles of the harness (plain, traced, the orchestrator alone) into bench-profile/
bench-profile:
	$(GO) build -o bench-profile/orchestrator ./cmd/orchestrator
	bench-profile/orchestrator bench --only profile --sagas 10000 --concurrency 2000 --profile-dir bench-profile

# Temporal's CLI (its dev server), for the side-by-side: built once with go install, cached.
TEMPORAL_VERSION := v1.5.1
TEMPORAL_BIN ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/sagapipe/temporal-$(TEMPORAL_VERSION)

## bench-temporal: the orders saga on Temporal's dev server (bench/temporal), side by side (builds the CLI once: long)
bench-temporal:
	@if [ ! -x "$(TEMPORAL_BIN)" ]; then d=$$(mktemp -d) && GOBIN=$$d $(GO) install github.com/temporalio/cli/cmd/temporal@$(TEMPORAL_VERSION) && mkdir -p "$(dir $(TEMPORAL_BIN))" && mv $$d/temporal "$(TEMPORAL_BIN)"; fi
	cd bench/temporal && $(GO) run . --temporal "$(TEMPORAL_BIN)"

## lint: formatting, go vet and staticcheck (pinned: internal/tools/staticcheck)
lint: staticcheck-build
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	"$(STATICCHECK_BIN)" ./...

## staticcheck-build: build staticcheck into $(STATICCHECK_BIN) unless it is there (about a minute, once)
staticcheck-build:
	@if [ ! -x "$(STATICCHECK_BIN)" ]; then \
		echo "building staticcheck $(STATICCHECK_VERSION) into $(STATICCHECK_BIN) (once; it is cached)"; \
		mkdir -p "$(dir $(STATICCHECK_BIN))" && \
		(cd internal/tools/staticcheck && $(GO) build -o "$(STATICCHECK_BIN).tmp" honnef.co/go/tools/cmd/staticcheck) && \
		mv "$(STATICCHECK_BIN).tmp" "$(STATICCHECK_BIN)"; \
	fi

## dev: run the embedded Kafka (127.0.0.1:9092) and registry (127.0.0.1:8081) until Ctrl-C
dev:
	$(GO) run ./cmd/orchestrator dev

## jaeger-build: build Jaeger into $(JAEGER_BIN) unless it is there (a few minutes, once)
jaeger-build:
	@if [ ! -x "$(JAEGER_BIN)" ]; then \
		echo "building Jaeger $(JAEGER_VERSION) into $(JAEGER_BIN) (once; it is cached)"; \
		mkdir -p "$(dir $(JAEGER_BIN))" && \
		(cd internal/tools/jaeger && $(GO) build -o "$(JAEGER_BIN).tmp" github.com/jaegertracing/jaeger/cmd/jaeger) && \
		mv "$(JAEGER_BIN).tmp" "$(JAEGER_BIN)"; \
	fi

## jaeger: run Jaeger in the foreground: OTLP on 127.0.0.1:4317 (gRPC) and :4318 (HTTP), query API on :16686
jaeger: jaeger-build
	JAEGER_LOG_LEVEL=info "$(JAEGER_BIN)" --config $(JAEGER_CONFIG)

## run-traced: the demo exporting its traces to Jaeger (started in the background unless one answers on :16686)
run-traced: jaeger-build
	@if ! (exec 3<>/dev/tcp/127.0.0.1/16686) 2>/dev/null; then \
		mkdir -p .data; \
		"$(JAEGER_BIN)" --config $(JAEGER_CONFIG) > .data/jaeger.log 2>&1 & echo $$! > .data/jaeger.pid; \
		for i in $$(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/16686) 2>/dev/null && break; sleep 0.1; done; \
		echo "Jaeger started in the background (pid $$(cat .data/jaeger.pid), log .data/jaeger.log); stop it with: make jaeger-stop"; \
	fi
	rm -rf $(TRACED_DIR)
	OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 $(GO) run ./cmd/orchestrator demo --orders 100 \
		--data-dir $(TRACED_DIR) --jaeger http://127.0.0.1:16686
	@echo "Jaeger's query API: http://127.0.0.1:16686/api/services, /api/traces?service=sagapipe-orchestrator"

## jaeger-stop: stop the Jaeger that run-traced started
jaeger-stop:
	@if [ -f .data/jaeger.pid ]; then kill $$(cat .data/jaeger.pid) 2>/dev/null || true; rm -f .data/jaeger.pid; fi
