# quorumq — build, test and code generation.
# Tool versions are pinned in scripts/tools.sh.

STATICCHECK_VERSION := $(shell . ./scripts/tools.sh && echo $$STATICCHECK_VERSION)

GO        ?= go
PKGS      := ./...
FUZZTIME  ?= 3m

.PHONY: all build test test-short lint proto proto-check fuzz bench clean image deploy-test chart-test chaos

all: build

build:
	$(GO) build $(PKGS)
	CGO_ENABLED=0 $(GO) build -o bin/quorumq ./cmd/quorumq

## test: what CI runs (README): generated code fresh, lint, every test with -race,
## the Helm chart checks, and the Docker smoke test where a Docker daemon answers.
## Packages run one at a time (-p 1): the multi-node tests of cluster/ and the
## chaos run of test/chaos each load both cores of the machine; run together,
## their elections and catch-ups time out.
test: proto-check lint
	$(GO) test -race -count=1 -p 1 -timeout 25m $(PKGS)
	$(MAKE) chart-test
	@if docker info >/dev/null 2>&1; then $(MAKE) deploy-test; else echo "skip: deploy-test (no Docker daemon)"; fi

## test-short: the unit tests alone, no race detector.
test-short:
	$(GO) test -count=1 $(PKGS)

## lint: gofmt, go vet and staticcheck must be clean.
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) $(PKGS)

## proto: regenerate the Go code of proto/ with the pinned generators.
proto:
	./scripts/genproto.sh

## proto-check: fail if the committed generated code is stale. Needs protoc
## (apt-get install protobuf-compiler); skipped with a warning outside CI.
proto-check:
	@if command -v protoc >/dev/null 2>&1 || [ -n "$$CI" ]; then \
	  ./scripts/genproto.sh --check; \
	else \
	  echo "warning: protoc not installed, generated code not checked (apt-get install protobuf-compiler)"; \
	fi

## chaos: the full chaos matrix (every fault kind, several seeds, at least
## CHAOS_MIN) against real processes in network namespaces; needs root.
## Run folders (history, timeline, verdict) go to CHAOS_DIR.
CHAOS_MIN ?= 30m
CHAOS_DIR ?= chaos-runs
chaos:
	QUORUMQ_CHAOS=full QUORUMQ_CHAOS_MIN=$(CHAOS_MIN) QUORUMQ_CHAOS_DIR=$(abspath $(CHAOS_DIR)) QUORUMQ_NETNS_REQUIRED=1 \
	  $(GO) test ./test/chaos -run TestChaosFull -count=1 -v -timeout 3h

## fuzz: run every fuzz target of fsm for FUZZTIME each.
fuzz:
	@for f in $$($(GO) test ./fsm -list '^Fuzz' | grep '^Fuzz'); do \
	  echo "== $$f"; $(GO) test ./fsm -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) || exit 1; \
	done

## bench: the state machine benchmarks, on one core, 6 runs (feed to benchstat).
bench:
	$(GO) test ./fsm -run '^$$' -bench . -benchtime 2s -count 6 -cpu 1

clean:
	$(GO) clean -testcache

# The container image (deploy/docker). VERSION is the release tag (vX.Y.Z)
# on a tagged commit, else empty and the binary keeps its built-in version.
IMAGE      ?= quorumq:dev
IMAGE_ARCH ?= amd64
VERSION    ?= $(shell git describe --tags --match 'v[0-9]*' --dirty 2>/dev/null | sed 's/^v//')
REVISION   ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS    := -s -w $(if $(VERSION),-X github.com/quorumq/quorumq/cluster.Version=$(VERSION))

## image: a static linux binary built here, put into a scratch image (IMAGE).
image:
	CGO_ENABLED=0 GOOS=linux GOARCH=$(IMAGE_ARCH) $(GO) build -trimpath -ldflags '$(LDFLAGS)' \
	  -o bin/quorumq-linux-$(IMAGE_ARCH) ./cmd/quorumq
	rm -rf bin/image && mkdir -p bin/image/data && cp bin/quorumq-linux-$(IMAGE_ARCH) bin/image/quorumq
	@version='$(VERSION)'; \
	  if [ -z "$$version" ]; then version=$$(bin/image/quorumq version -o table 2>/dev/null | awk '{print $$2}'); fi; \
	  echo "docker build $(IMAGE) version=$$version revision=$(REVISION)"; \
	  docker build -q -f deploy/docker/Dockerfile.local --build-arg VERSION="$$version" \
	    --build-arg REVISION='$(REVISION)' -t $(IMAGE) bin/image

## deploy-test: image, then a 3-node Docker Compose cluster: form, send and
## receive through several nodes, kill one, again (deploy/docker/smoke.sh).
deploy-test:
	./deploy/docker/smoke.sh

## chart-test: render and lint the Helm chart offline and check its invariants
## (deploy/chartcheck, a module of its own: vet, staticcheck, tests).
chart-test:
	cd deploy/chartcheck && $(GO) vet ./... && \
	  $(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./... && \
	  $(GO) test -count=1 ./...
