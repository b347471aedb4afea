#!/usr/bin/env bash
# Regenerates the Go code of every .proto under proto/ with the pinned
# generators. With --check it generates into a temporary tree and fails if the
# committed code differs (stale generated code).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/tools.sh

bin="$(go env GOPATH)/bin"
export PATH="$bin:$PATH"

have=$(protoc --version 2>/dev/null | awk '{print $2}')
if [ "$have" != "$PROTOC_VERSION" ]; then
  echo "genproto: need protoc $PROTOC_VERSION, have '${have:-none}' (apt-get install protobuf-compiler)" >&2
  exit 1
fi
if ! protoc-gen-go --version 2>/dev/null | grep -q "$PROTOC_GEN_GO_VERSION"; then
  GOBIN="$bin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
fi
if ! protoc-gen-go-grpc --version 2>/dev/null | grep -q "${PROTOC_GEN_GO_GRPC_VERSION#v}"; then
  GOBIN="$bin" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
fi

out="$PWD/proto"
if [ "${1:-}" = "--check" ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi

files=$(cd proto && find . -name '*.proto' | sed 's|^\./||' | sort)
(cd proto && protoc -I . \
  --go_out="$out" --go_opt=module=github.com/quorumq/quorumq/proto \
  --go-grpc_out="$out" --go-grpc_opt=module=github.com/quorumq/quorumq/proto \
  $files)
[ "${1:-}" = "--check" ] || exit 0

stale=0
for f in $(cd "$out" && find . -name '*.go' | sed 's|^\./||' | sort); do
  if ! cmp -s "$out/$f" "proto/$f"; then echo "stale generated code: proto/$f" >&2; stale=1; fi
done
for f in $(cd proto && find . -name '*.pb.go' | sed 's|^\./||' | sort); do
  [ -f "$out/$f" ] || { echo "generated file without a .proto: proto/$f" >&2; stale=1; }
done
if [ $stale -ne 0 ]; then echo "run 'make proto' and commit the result" >&2; exit 1; fi
echo "generated code is up to date"
