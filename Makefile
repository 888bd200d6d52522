# sagapipe: the two commands that matter are `make run` and `make test`.
GO ?= go

.PHONY: run test bench lint dev

## run: the orders saga demo on the embedded Kafka and Schema Registry (no setup)
run:
	$(GO) run ./cmd/orchestrator demo

## test: every test against the embedded Kafka and registry, with the race detector
test:
	$(GO) test -race -count=1 -timeout 14m ./...

## bench: benchmarks of the hot paths (figures are in the README)
## The saga benchmarks run a fixed 5,000 sagas: end-to-end throughput and
## per-saga memory only mean something once start-up costs are amortized.
bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 3 ./schema/ ./pipe/ ./saga/
	$(GO) test -run '^$$' -bench . -benchmem -count 3 -benchtime 5000x ./examples/orders/

## lint: formatting and go vet
lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

## dev: run the embedded Kafka (127.0.0.1:9092) and registry (127.0.0.1:8081) until Ctrl-C
dev:
	$(GO) run ./cmd/orchestrator dev
