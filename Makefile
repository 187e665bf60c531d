# ray-executor. `make test` and `make run` install and start everything they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

ROOT    := $(CURDIR)
BIN     := $(ROOT)/bin
VENV    := $(ROOT)/.venv
PYTHON  ?= python3
GO      ?= go

# Pinned tool versions (installed from the Go module proxy into ./bin).
BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
STATICCHECK_VERSION        := v0.8.2
GRPCURL_VERSION            := v1.9.4
GRPC_HEALTH_PROBE_VERSION  := v0.4.62
KO_VERSION                 := v0.19.1

REQUIREMENTS := shared/executor/payload/requirements.txt
VENV_STAMP   := $(VENV)/.installed

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# --- tools -------------------------------------------------------------------------------
$(BIN)/buf:
	GOBIN=$(BIN) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(BIN)/protoc-gen-go:
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(BIN)/protoc-gen-go-grpc:
	GOBIN=$(BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
$(BIN)/staticcheck:
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
$(BIN)/grpcurl:
	GOBIN=$(BIN) $(GO) install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)
$(BIN)/grpc-health-probe:
	GOBIN=$(BIN) $(GO) install github.com/grpc-ecosystem/grpc-health-probe@$(GRPC_HEALTH_PROBE_VERSION)

$(BIN)/ko:
	GOBIN=$(BIN) $(GO) install github.com/google/ko@$(KO_VERSION)

# Knative Serving's queue-proxy, pinned as knative/validate pins Knative (serving v0.50.0 and
# the knative.dev/pkg it builds with), from a module of its own (knative/queueproxy) so the
# main module never takes Knative's dependencies. The e2e tests run every function and the
# ingress behind it (shared/testenv/queueproxy.go). Minutes cold on 2 cores; cached in ./bin.
$(BIN)/queue-proxy: knative/queueproxy/go.mod knative/queueproxy/go.sum
	cd knative/queueproxy && $(GO) build -trimpath -o $@ knative.dev/serving/cmd/queue

.PHONY: queue-proxy
queue-proxy: $(BIN)/queue-proxy ## build Knative's queue-proxy (pinned) into ./bin for the e2e tests

# The tests' OTLP receiver (issue 14): the OpenTelemetry Collector's own OTLP receiver
# (otlpreceiver v0.165.0) writing what it receives as JSON lines (shared/testenv/otlpsink.go
# starts it), from a module of its own so the main module never takes the collector's
# dependencies. About a minute cold; cached in ./bin.
$(BIN)/otlp-sink: shared/testenv/otlpsink/go.mod shared/testenv/otlpsink/go.sum shared/testenv/otlpsink/main.go
	cd shared/testenv/otlpsink && $(GO) build -trimpath -o $@ .

.PHONY: otlp-sink
otlp-sink: $(BIN)/otlp-sink ## build the tests' OTLP receiver (the collector's otlpreceiver, pinned) into ./bin

$(BIN)/nats-local: $(shell find shared/natslocal -name '*.go') go.mod go.sum
	$(GO) build -o $@ ./shared/natslocal/cmd/nats-local

.PHONY: tools
tools: $(BIN)/grpcurl $(BIN)/grpc-health-probe $(BIN)/nats-local $(BIN)/queue-proxy $(BIN)/otlp-sink ## install grpcurl, grpc-health-probe; build the local NATS server, Knative's queue-proxy and the OTLP receiver

$(VENV_STAMP): $(REQUIREMENTS)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r $(REQUIREMENTS)
	touch $@

.PHONY: venv
venv: $(VENV_STAMP) ## create .venv with the pinned Ray, nats-py and pytest

# --- code generation ---------------------------------------------------------------------
.PHONY: generate
generate: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc ## regenerate shared/gen from specs/
	$(BIN)/buf lint
	$(BIN)/buf generate

.PHONY: check-generate
check-generate: generate ## fail if the committed generated code is stale
	@git diff --exit-code --stat -- shared/gen || { echo "shared/gen is stale: run 'make generate' and commit" >&2; exit 1; }
	@test -z "$$(git status --porcelain -- shared/gen)" || { echo "shared/gen has untracked files: run 'make generate' and commit" >&2; exit 1; }

# --- checks ------------------------------------------------------------------------------
.PHONY: breaking
breaking: $(BIN)/buf ## buf breaking: the work tree, every commit that changed the proto, and the original's contract (scripts/proto-breaking.sh)
	scripts/proto-breaking.sh

.PHONY: lint
lint: $(BIN)/staticcheck $(VENV_STAMP) ## go vet, staticcheck and gofmt (the e2e and bench tags too); ruff and mypy for the payload
	@test -z "$$(gofmt -l functions shared knative e2e *.go)" || { gofmt -l functions shared knative e2e *.go; echo "gofmt needed" >&2; exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags ray ./...
	$(GO) vet -tags e2e,exclusive,bench ./e2e/
	$(BIN)/staticcheck ./...
	$(BIN)/staticcheck -tags ray ./...
	$(BIN)/staticcheck -tags e2e,exclusive,bench ./e2e/
	cd knative/validate && $(GO) vet ./...
	cd knative/image && $(GO) vet ./...
	cd shared/testenv/otlpsink && $(GO) vet ./...
	scripts/lint-python.sh

.PHONY: ray-up ray-down
ray-up: $(VENV_STAMP) ## start a local Ray head on 127.0.0.1:8265 (unless one runs)
	scripts/ray-head.sh up
ray-down: ## stop the local Ray head if ray-up started it
	scripts/ray-head.sh down

.PHONY: test
test: $(VENV_STAMP) tools ## run every test against a real local Ray head (started and stopped here)
	scripts/test.sh

.PHONY: run
run: $(VENV_STAMP) tools ## start Ray, the LLM stand-in and the functions locally, until Ctrl-C
	scripts/run.sh

.PHONY: knative-test
knative-test: ## validate knative/ with Knative's own API types (separate module: minutes cold)
	cd knative/validate && $(GO) test -count=1 ./...

.PHONY: images
images: $(BIN)/ko ## OCI image tarballs of the four binaries in dist/images (ko, offline; each < 30 MB)
	scripts/images.sh

.PHONY: deploy undeploy
deploy: $(BIN)/ko ## apply knative/ to the current cluster with ko (needs KO_DOCKER_REPO; see knative/README.md)
	$(BIN)/ko apply -f knative/
undeploy: ## delete everything knative/ created (the namespace included)
	kubectl delete -f knative/

FUZZTIME ?= 50000x
FUZZ_TARGETS := FuzzServer:./shared/rpcevents FuzzNormalize:./shared/domain FuzzJobDetails:./shared/ray FuzzRecord:./shared/domain

.PHONY: fuzz
fuzz: ## run each fuzz target for FUZZTIME (50000 inputs each; crashers land in testdata/fuzz as seeds)
	@for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t%%:*}"; \
		$(GO) test -run '^$$' -fuzz "^$${t%%:*}$$" -fuzztime $(FUZZTIME) $${t#*:} || exit 1; \
	done

.PHONY: bench
# TestExecutorReport and TestLargePromptMemoryReport need a Ray head: with RAY_ADDRESS set
# they use it (RAY_AUTH_TOKEN(_FILE) as for the functions) and leave it running; without,
# the local head is started, and stopped after only if this target started it.
bench: $(VENV_STAMP) tools ## benchmarks: cold starts, capacity, the chain through Knative's queue-proxy, the chain traced, Ray client overhead, FF-Go vs shared/serving CPU, records at scale, large-prompt memory, the standing executor vs the original's model (BENCHMARKS.md)
	$(GO) test -tags 'e2e bench' -count=1 -run 'TestColdStartReport|TestFunctionCapacityReport|TestQueueProxyChainReport|TestTelemetryChainReport' -v ./e2e/
	$(GO) test -count=1 -run '^$$' -bench 'JobOverhead' ./shared/ray/
	$(GO) test -tags bench -count=1 -run '^TestFrameworkCPUReport$$' -v ./functions/framework/
	$(GO) test -tags 'e2e bench' -count=1 -timeout 30m -run '^TestRecordsScaleReport$$' -v ./e2e/
	@own=0; if [ -z "$$RAY_ADDRESS" ]; then \
		test -f .ray-head-started || own=1; scripts/ray-head.sh up || exit 1; \
		unset RAY_AUTH_TOKEN; export RAY_AUTH_TOKEN_FILE="$(CURDIR)/.run/ray-auth-token"; fi; \
	export PATH="$(CURDIR)/.venv/bin:$$PATH"; \
	$(GO) test -tags 'e2e bench' -count=1 -timeout 20m -run '^TestLargePromptMemoryReport$$' -v ./e2e/ && \
	$(GO) test -tags 'e2e bench' -count=1 -timeout 30m -run '^TestExecutorReport$$' -v ./e2e/; rc=$$?; \
	if [ $$own = 1 ]; then scripts/ray-head.sh down; fi; exit $$rc

# Execution models on Ray (issue 11): the original's actor per agent against standing async
# actors and Ray Serve, in one Ray job (shared/executor/payload/bench/README.md). Ray Serve is
# installed into .venv for it only. A head that already answers is used and left running.
SERVE_REQUIREMENTS := shared/executor/payload/bench/requirements-serve.txt
SERVE_STAMP        := $(VENV)/.installed-serve
$(SERVE_STAMP): $(VENV_STAMP) $(SERVE_REQUIREMENTS)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r $(SERVE_REQUIREMENTS)
	touch $@

.PHONY: bench-models
bench-models: $(SERVE_STAMP) ## execution models on Ray: original actor-per-agent vs async actors vs Ray Serve (BENCHMARKS.md)
	@own=0; if [ -z "$$RAY_ADDRESS" ]; then \
		test -f .ray-head-started || own=1; scripts/ray-head.sh up || exit 1; \
		unset RAY_AUTH_TOKEN; export RAY_AUTH_TOKEN_FILE="$(CURDIR)/.run/ray-auth-token"; fi; \
	$(GO) test -tags bench -count=1 -timeout 120m -run '^TestExecutionModelsReport$$' -v ./shared/executor/payload/bench/; rc=$$?; \
	if [ $$own = 1 ]; then scripts/ray-head.sh down; fi; exit $$rc

.PHONY: build
build: ## build every binary into ./bin (stamped with their commit; funcframework: the Functions Framework runner; rexctl: the CLI)
	for f in execute status list ingress; do GOFLAGS=-buildvcs=true $(GO) build -o $(BIN)/$$f ./functions/$$f/cmd || exit 1; done
	GOFLAGS=-buildvcs=true $(GO) build -o $(BIN)/funcframework ./functions/framework/cmd
	$(GO) build -o $(BIN)/rexctl ./functions/rexctl/cmd
	$(GO) build -o $(BIN)/llm-standin ./shared/llmstub/cmd/llm-standin
	$(GO) build -o $(BIN)/nats-local ./shared/natslocal/cmd/nats-local
