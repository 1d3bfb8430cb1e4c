#!/usr/bin/env bash
# CPU profile of custody's decision path under load: starts custody with --debug-addr, drives it
# with loadgen on one traffic shape (see genbodies: repeat = memo hits, distinct = memo misses)
# and takes a CPU profile of PROFILE_SECONDS in the middle of the run.
#
#   bash test/load/profile.sh                       # repeat shape, 4 connections, 15 s profile
#   SHAPE=distinct bash test/load/profile.sh        # every request distinct
#   go tool pprof -top -nodecount 40 test/load/profile-repeat.pb.gz
set -euo pipefail

SHAPE=${SHAPE:-repeat}
CONNS=${CONNS:-4}
PROFILE_SECONDS=${PROFILE_SECONDS:-15}
CUSTODY_ADDR=${CUSTODY_ADDR:-127.0.0.1:28191}
NATS_ADDR=${NATS_ADDR:-127.0.0.1:24232}
DEBUG_ADDR=${DEBUG_ADDR:-127.0.0.1:28192}
OUT=${OUT:-test/load/profile-$SHAPE.pb.gz}

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
TMP=$(mktemp -d "${TMPDIR:-/tmp}/custody-profile.XXXXXX")
PID=
cleanup() {
	if [[ -n $PID ]] && kill -0 "$PID" 2>/dev/null; then
		kill -TERM "$PID" 2>/dev/null || true
		wait "$PID" 2>/dev/null || true
	fi
	rm -rf "$TMP"
}
trap cleanup EXIT

go build -o "$TMP/custody" ./cmd/custody
go build -o "$TMP/loadgen" ./test/load/loadgen
go build -o "$TMP/genbodies" ./test/load/genbodies
"$TMP/genbodies" -out "$TMP/bodies" -intent-key "$TMP/intent.key"

"$TMP/custody" serve --addr "$CUSTODY_ADDR" --nats-listen "$NATS_ADDR" --data-dir "$TMP/data" \
	--intent-key-file "$TMP/intent.key" --log-level error --debug-addr "$DEBUG_ADDR" >"$TMP/custody.log" 2>&1 &
PID=$!
for _ in $(seq 1 240); do
	curl -fsS -o /dev/null --max-time 2 "http://$CUSTODY_ADDR/readyz" 2>/dev/null && break
	kill -0 "$PID" 2>/dev/null || { tail -n 20 "$TMP/custody.log" >&2; exit 1; }
	sleep 0.5
done

extra=()
[[ $SHAPE == distinct ]] && extra=(-unique "@@UNIQUE@@")
"$TMP/loadgen" -name custody -shape "$SHAPE" -url "http://$CUSTODY_ADDR/v1/authorize" \
	-bodies "$TMP/bodies/$SHAPE-custody.jsonl" "${extra[@]}" -c "$CONNS" -warmup 5s -d "$((PROFILE_SECONDS + 5))s" &
LOAD=$!
sleep 7
curl -fsS -o "$OUT" "http://$DEBUG_ADDR/debug/pprof/profile?seconds=$PROFILE_SECONDS"
wait "$LOAD"
echo "profile: $OUT"
go tool pprof -top -nodecount 30 "$OUT" 2>/dev/null | head -n 40
