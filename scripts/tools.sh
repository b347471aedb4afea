#!/usr/bin/env bash
# Pinned versions of every tool the build uses. Sourced by the Makefile
# targets and by .ci/run, so that one place says what "pinned" means.
PROTOC_VERSION="3.21.12"                 # Debian bookworm protobuf-compiler
PROTOC_GEN_GO_VERSION="v1.36.12"         # google.golang.org/protobuf/cmd/protoc-gen-go
PROTOC_GEN_GO_GRPC_VERSION="v1.5.1"      # google.golang.org/grpc/cmd/protoc-gen-go-grpc
STATICCHECK_VERSION="v0.8.2"             # honnef.co/go/tools/cmd/staticcheck
