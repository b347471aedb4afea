# quorumq — build, test and code generation.
# Tool versions are pinned in scripts/tools.sh.

STATICCHECK_VERSION := $(shell . ./scripts/tools.sh && echo $$STATICCHECK_VERSION)

GO        ?= go
PKGS      := ./...
FUZZTIME  ?= 3m

.PHONY: all build test test-short lint proto proto-check fuzz bench clean

all: build

build:
	$(GO) build $(PKGS)
	CGO_ENABLED=0 $(GO) build -o bin/quorumq ./cmd/quorumq

## test: what CI runs (README): generated code fresh, lint, every test with -race.
test: proto-check lint
	$(GO) test -race -count=1 $(PKGS)

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
