#!/usr/bin/env bash
# Smoke test of the container image and deploy/docker/compose.yaml:
#
#   1. build the image (make image) and the CLI;
#   2. start the three-node cluster under a project name of its own;
#   3. copy the CA and the admin credential (made by the compose file's
#      one-shot certs services) out of the volume; every call below uses
#      them (TLS against the CA, the admin's client certificate); wait until
#      every node sees 3 members and a controller leader, is ready, and its
#      container is healthy; check that every node runs with TLS and the
#      gossip key, that running the certs services again keeps the
#      certificates, and that the client port refuses plaintext and calls
#      without a credential;
#   4. create a queue, send through one node and receive through another;
#   5. send a second batch, kill the controller leader's container, then
#      receive that batch and send and receive a third through the survivors;
#   6. tear everything down (containers, network, volumes), pass or fail.
#
# Client ports are published on 127.0.0.1 only, on ports Docker picks
# (QUORUMQ_Q1_PORT, QUORUMQ_Q2_PORT, QUORUMQ_Q3_PORT choose fixed ones). No
# traffic leaves the loopback interface and the compose network.
#
# Environment: SMOKE_SKIP_BUILD=1 uses the image as it is (IMAGE, default
# quorumq:dev); SMOKE_TIMEOUT bounds each wait (default 120 s).
set -euo pipefail

cd "$(dirname "$0")/../.."
root=$PWD

IMAGE=${IMAGE:-quorumq:dev}
timeout_s=${SMOKE_TIMEOUT:-120}
project="quorumq-smoke-$$"
compose_file="$root/deploy/docker/compose.yaml"

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  echo "smoke: neither 'docker compose' nor 'docker-compose' is installed" >&2
  exit 1
fi
dc() { "${compose[@]}" -f "$compose_file" -p "$project" "$@"; }

# Empty = Docker picks a free port; `dc port` tells which.
export QUORUMQ_IMAGE="$IMAGE" QUORUMQ_BIND=127.0.0.1
export QUORUMQ_Q1_PORT="${QUORUMQ_Q1_PORT-}" QUORUMQ_Q2_PORT="${QUORUMQ_Q2_PORT-}" QUORUMQ_Q3_PORT="${QUORUMQ_Q3_PORT-}"

log() { printf '%s smoke: %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() {
  log "FAIL: $*"
  exit 1
}

creds="" # a temporary directory: the CLI's credentials and config
# Always: remove the project's containers, network and volumes, and creds.
cleanup() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    log "logs of the failed run:"
    dc logs --no-color --tail 40 2>&1 || true
  fi
  dc down -v --remove-orphans -t 15 >/dev/null 2>&1 || dc down -v --remove-orphans -t 15 || true
  [ -z "$creds" ] || rm -rf "$creds"
  if [ "$rc" = 0 ]; then
    log "PASS"
    echo "smoke: 1 passed, 0 failed"
  else
    log "FAIL (exit $rc)"
    echo "smoke: 0 passed, 1 failed"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start=$(date +%s)
if [ "${SMOKE_SKIP_BUILD:-}" != 1 ]; then
  log "building $IMAGE (make image)"
  make --no-print-directory image IMAGE="$IMAGE"
fi
log "building the CLI (bin/quorumq)"
"${GO:-go}" build -o bin/quorumq ./cmd/quorumq
built=$(date +%s)

# The CLI's contexts live here, not in the user's config directory, and no
# selected context of the user's completes the flags below.
creds=$(mktemp -d)
export QUORUMQ_CONFIG_DIR="$creds/config"
unset QUORUMQ_CONTEXT QUORUMQ_CA QUORUMQ_CERT QUORUMQ_KEY QUORUMQ_TOKEN QUORUMQ_SERVERS
# qq: the CLI as the admin, over TLS, from the context "smoke" made below
# (a context, not --key: on send, --key is the partition key).
qq() { "$root/bin/quorumq" --context smoke --timeout 5s "$@"; }

log "starting project $project"
dc up -d --no-build

# The CA and the admin's client certificate, from the volume certs (the
# nodes mount it read-only; certs-admin made admin.pem before they started).
umask 077
for f in ca.pem admin.pem admin-key.pem; do
  docker cp "$(dc ps -q q1):/etc/quorumq/certs/$f" - | tar -xOf - >"$creds/$f" || fail "cannot copy $f out of q1"
  [ -s "$creds/$f" ] || fail "$f from q1 is empty"
done
umask 022

port() {
  local p
  p=$(dc port "$1" 7420 | tail -n 1)
  [ -n "$p" ] || fail "no published port for $1"
  echo "127.0.0.1:${p##*:}"
}
declare -A addr
for s in q1 q2 q3; do addr[$s]=$(port "$s"); done
log "client ports: q1=${addr[q1]} q2=${addr[q2]} q3=${addr[q3]}"
"$root/bin/quorumq" context add smoke --servers "${addr[q1]},${addr[q2]},${addr[q3]}" \
  --ca "$creds/ca.pem" --cert "$creds/admin.pem" --key "$creds/admin-key.pem" >/dev/null

# wait_for SECONDS CMD...: run CMD every half second until it succeeds
# (status 0) or SECONDS have passed (status 1).
wait_for() {
  local deadline=$(($(date +%s) + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}
# until_ok DESC CMD...: wait_for CMD for SMOKE_TIMEOUT, else fail with DESC.
until_ok() {
  local desc=$1
  shift
  wait_for "$timeout_s" "$@" || fail "timed out after ${timeout_s}s: $desc"
}

# formed ADDR N: the node at ADDR sees N members and a controller leader,
# and is ready.
formed() {
  local st
  st=$(qq --servers "$1" cluster status -o json) || return 1
  grep -q "\"members\":$2[,}]" <<<"$st" && grep -q '"controllerLeader":"q[0-9]"' <<<"$st" &&
    grep -q '"ready":true' <<<"$st"
}
until_ok "3 members and a controller leader" formed "${addr[q1]}" 3
for s in q2 q3; do until_ok "$s ready" formed "${addr[$s]}" 3; done
# The container health check (/quorumq health, no shell in the image).
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$(dc ps -q "$1")")" = healthy ]; }
for s in q1 q2 q3; do until_ok "$s healthy (the image's HEALTHCHECK)" healthy "$s"; done
leader=$(qq --servers "${addr[q1]}" cluster status -o json | sed -n 's/.*"controllerLeader":"\([^"]*\)".*/\1/p')
formed_at=$(date +%s)
log "cluster formed in $((formed_at - built))s; controller leader $leader"

# TLS between the nodes and the gossip key: every node got the flags (the
# cluster formed, so the certificates work), and none runs --insecure.
for s in q1 q2 q3; do
  args=$(docker inspect -f '{{join .Args " "}}' "$(dc ps -q "$s")")
  for f in --tls-ca --tls-cert --tls-key --gossip-key-file; do
    grep -q -- "$f " <<<"$args" || fail "$s runs without $f: $args"
  done
  if grep -q -- --insecure <<<"$args"; then fail "$s runs with --insecure: $args"; fi
done
# The certs services keep what the volume holds (--keep-existing): another
# run exits 0 and leaves the CA as it was.
ca_pem() { docker cp "$(dc ps -q q1):/etc/quorumq/certs/ca.pem" - | tar -xOf -; }
ca_before=$(ca_pem) || fail "cannot read ca.pem from q1"
dc run --rm -T --no-deps certs-ca >/dev/null || fail "certs-ca, run again, failed (it should keep the existing CA)"
[ "$(ca_pem)" = "$ca_before" ] || fail "certs-ca, run again, replaced the CA"
admin_before=$(cat "$creds/admin.pem")
dc run --rm -T --no-deps certs-admin >/dev/null || fail "certs-admin, run again, failed (it should keep the existing certificate)"
docker cp "$(dc ps -q q1):/etc/quorumq/certs/admin.pem" - | tar -xOf - | cmp -s - <(printf '%s\n' "$admin_before") ||
  fail "certs-admin, run again, replaced the admin certificate"
log "nodes run with TLS and the gossip key; the certs services keep existing files"

# The client port: TLS only, and no call without a credential. Health stays
# open (the containers' health checks use it with the CA alone).
anon() { "$root/bin/quorumq" --timeout 5s "$@"; }
if out=$(anon --servers "${addr[q1]}" queue create anon-plaintext 2>&1); then
  fail "a plaintext client created a queue: $out"
fi
if out=$(anon --servers "${addr[q1]}" --ca "$creds/ca.pem" queue create anon-tls 2>&1); then
  fail "a client without a credential created a queue: $out"
fi
grep -qi "unauthenticated\|credential" <<<"$out" || fail "a call without a credential failed, but not as unauthenticated: $out"
anon health --addr "${addr[q1]}" --ca "$creds/ca.pem" >/dev/null || fail "health over TLS without a credential refused"
log "client port: plaintext and anonymous calls refused, health open"

qq --servers "${addr[q1]}" queue create smoke --partitions 3 >/dev/null

# send ADDR BODY...: enqueue each body once, with its body as dedup id, so a
# retry after an ambiguous failure stores nothing twice.
send() {
  local a=$1 b
  shift
  for b in "$@"; do
    until_ok "send $b through $a" qq --servers "$a" send smoke --dedup-id "$b" "$b"
  done
}

# recv_all ADDR BODY...: receive (and ack) through ADDR until every body was
# seen; redeliveries are allowed, a missing body fails after the deadline.
recv_all() {
  local a=$1 deadline=$(($(date +%s) + timeout_s)) out b
  shift
  declare -A want=()
  for b in "$@"; do want[$(printf %s "$b" | base64)]=$b; done
  while [ "${#want[@]}" -gt 0 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "timed out receiving through $a; missing: ${want[*]}"
    out=$(qq --servers "$a" recv smoke --max 10 --wait 2s --ack -o json 2>/dev/null) || {
      sleep 0.5
      continue
    }
    while read -r b; do
      [ -z "$b" ] || unset "want[$b]"
    done < <(sed -n 's/.*"payload":"\([^"]*\)".*/\1/p' <<<"$out")
  done
}

log "send through q1, receive through q2"
send "${addr[q1]}" a1 a2 a3
recv_all "${addr[q2]}" a1 a2 a3

log "send through q3, then kill $leader (the controller leader)"
send "${addr[q3]}" b1 b2 b3
docker kill "$(dc ps -q "$leader")" >/dev/null

survivors=()
for s in q1 q2 q3; do [ "$s" = "$leader" ] || survivors+=("$s"); done
s1=${survivors[0]} s2=${survivors[1]}
log "receive the earlier batch through $s1, send through $s1, receive through $s2"
recv_all "${addr[$s1]}" b1 b2 b3
send "${addr[$s1]}" c1 c2 c3
recv_all "${addr[$s2]}" c1 c2 c3
# leader_is_not ADDR NODE: the node at ADDR knows a controller leader other
# than NODE and is ready.
leader_is_not() {
  local st
  st=$(qq --servers "$1" cluster status -o json) || return 1
  grep -q '"controllerLeader":"q[0-9]"' <<<"$st" && ! grep -q "\"controllerLeader\":\"$2\"" <<<"$st" &&
    grep -q '"ready":true' <<<"$st"
}
until_ok "a controller leader other than $leader" leader_is_not "${addr[$s2]}" "$leader"
newleader=$(qq --servers "${addr[$s2]}" cluster status -o json | sed -n 's/.*"controllerLeader":"\([^"]*\)".*/\1/p')
# Gossip should count the killed node out within seconds. Reported, not
# enforced: the server does not do it yet (cluster/membership.go records
# memberlist's Node.State, which memberlist never updates).
if ! wait_for 15 formed "${addr[$s2]}" 2; then
  log "warning: 15s after the kill, gossip on $s2 still counts $leader alive"
fi
log "after the kill: controller leader $newleader; took $(($(date +%s) - formed_at))s"
log "total $(($(date +%s) - start))s (build $((built - start))s)"
