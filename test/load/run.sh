#!/usr/bin/env bash
# Reproducible load comparison: custody (every decision acked by JetStream before its answer)
# against OPA's own server (no decision logging) on the same policies and the same inputs, on
# this machine, in one run. See test/load/README.md.
#
#   bash test/load/run.sh                                # from the repository root
#   DURATION=5s WARMUP=2s ROUNDS=1 bash test/load/run.sh # a quick check
set -euo pipefail

DURATION=${DURATION:-20s}            # measured time of each load run
WARMUP=${WARMUP:-5s}                 # warm-up before each load run, not counted
CONNS=${CONNS:-"4 64"}               # connection counts to compare at
ROUNDS=${ROUNDS:-3}                  # rounds of A B (OPA, custody) per connection count
BODIES=${BODIES:-400}                # varied requests the shapes are drawn from (see genbodies)
SHAPES=${SHAPES:-"repeat distinct"}  # traffic shapes: repeat (8 bodies, memo hits), distinct (every request new)
RSS_RUN=${RSS_RUN:-1}                # 1: a further custody run watching its RSS over time
RSS_DURATION=${RSS_DURATION:-60s}
RSS_CONNS=${RSS_CONNS:-64}
RSS_SHAPE=${RSS_SHAPE:-distinct}     # distinct fills the decision memo: the worst case for memory
BATCH_ROUNDS=${BATCH_ROUNDS:-20}     # rounds of 100 single AuthZEN evaluations vs one batch of 100 (0: skip)
OPA_VERSION=${OPA_VERSION:-v1.22.3}
CUSTODY_ADDR=${CUSTODY_ADDR:-127.0.0.1:28181}
OPA_ADDR=${OPA_ADDR:-127.0.0.1:28281}
NATS_ADDR=${NATS_ADDR:-127.0.0.1:24222}
NOMEMO=${NOMEMO:-0}                  # 1: also run custody with --decision-memo 0 (every decision evaluated)
NOMEMO_ADDR=${NOMEMO_ADDR:-127.0.0.1:28182}
NOMEMO_NATS_ADDR=${NOMEMO_NATS_ADDR:-127.0.0.1:24223}
OUT=${OUT:-test/load/last-run.txt}   # raw JSON lines of this run
KEEP_TMP=${KEEP_TMP:-0}              # 1: keep the work dir (binaries, bodies, logs, data)

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
TMP=$(mktemp -d "${TMPDIR:-/tmp}/custody-load.XXXXXX")
CUSTODY_PID= OPA_PID= NOMEMO_PID=
SAMPLERS=()

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

stop() { # pid: SIGTERM, then SIGKILL after 20 s
	local pid=$1
	[[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
	kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
	local s
	for s in "${SAMPLERS[@]}"; do kill "$s" 2>/dev/null || true; done
	stop "$CUSTODY_PID"
	stop "$NOMEMO_PID"
	stop "$OPA_PID"
	if [[ $KEEP_TMP == 1 ]]; then log "work dir kept: $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# port_free addr: nothing may answer there yet, or we would measure someone else's server.
port_free() {
	if (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; then
		die "$1 is already in use by another process; stop it or set CUSTODY_ADDR/OPA_ADDR/NATS_ADDR"
	fi
}

# wait_ready name pid url logfile
wait_ready() {
	for _ in $(seq 1 240); do
		kill -0 "$2" 2>/dev/null || { tail -n 20 "$4" >&2; die "$1 exited before it was ready"; }
		curl -fsS -o /dev/null --max-time 2 "$3" 2>/dev/null && return 0
		sleep 0.5
	done
	tail -n 20 "$4" >&2
	die "$1 not ready at $3 within 120 s"
}

# sample_rss pid file: VmRSS in kB, with the epoch second, every second while pid lives.
sample_rss() {
	( while kill -0 "$1" 2>/dev/null; do
		awk -v t="$(date +%s)" '/^VmRSS:/ { print t, $2 }' "/proc/$1/status" >>"$2" 2>/dev/null || true
		sleep 1
	done ) &
	SAMPLERS+=($!)
}

# rss_summary label file: first, last and peak RSS in MB, and a JSON line in OUT.
rss_summary() {
	awk -v label="$1" -v out="$OUT" '
		NR == 1 { first = $2 } { last = $2; if ($2 > max) max = $2; n++ }
		END {
			if (n == 0) { print "RSS " label ": no samples"; exit }
			printf "RSS %-30s first %6.1f MB   last %6.1f MB   peak %6.1f MB   (%d samples, 1/s)\n", label, first/1024, last/1024, max/1024, n
			printf "{\"name\":\"rss\",\"label\":\"%s\",\"first_mb\":%.1f,\"last_mb\":%.1f,\"max_mb\":%.1f,\"samples\":%d}\n", label, first/1024, last/1024, max/1024, n >> out
		}' "$2"
}

field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$2"; } # field name json-line
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; } # pid: user + system CPU, in clock ticks

: >"$OUT"
FAILED=0
ANSWERED=0        # custody decisions answered 2xx, by every client of this run
NOMEMO_ANSWERED=0 # the same for the custody without a decision memo

log "building custody, loadgen, genbodies and OPA $OPA_VERSION into $TMP"
go build -o "$TMP/custody" ./cmd/custody
go build -o "$TMP/loadgen" ./test/load/loadgen
go build -o "$TMP/genbodies" ./test/load/genbodies
GOBIN=$TMP go install "github.com/open-policy-agent/opa@$OPA_VERSION"

"$TMP/genbodies" -out "$TMP/bodies" -n "$BODIES" -intent-key "$TMP/intent.key"
printf '{"name":"meta","date":"%s","commit":"%s","go":"%s","cpus":%s,"duration":"%s","warmup":"%s","conns":"%s","rounds":%s,"bodies":%s,"shapes":"%s"}\n' \
	"$(date -u +%FT%TZ)" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$(go env GOVERSION)" \
	"$(nproc)" "$DURATION" "$WARMUP" "$CONNS" "$ROUNDS" "$BODIES" "$SHAPES" >>"$OUT"

port_free "$OPA_ADDR"
port_free "$CUSTODY_ADDR"
port_free "$NATS_ADDR"
if [[ $NOMEMO == 1 ]]; then
	port_free "$NOMEMO_ADDR"
	port_free "$NOMEMO_NATS_ADDR"
fi

log "starting OPA's server on $OPA_ADDR (policies/, no decision log)"
"$TMP/opa" run --server --addr "$OPA_ADDR" --log-level error --skip-version-check policies/ >"$TMP/opa.log" 2>&1 &
OPA_PID=$!
log "starting custody on $CUSTODY_ADDR (embedded NATS on $NATS_ADDR, default durability: JetStream ack)"
"$TMP/custody" serve --addr "$CUSTODY_ADDR" --nats-listen "$NATS_ADDR" --data-dir "$TMP/data" \
	--intent-key-file "$TMP/intent.key" --log-level error >"$TMP/custody.log" 2>&1 &
CUSTODY_PID=$!
if [[ $NOMEMO == 1 ]]; then
	log "starting custody --decision-memo 0 on $NOMEMO_ADDR (embedded NATS on $NOMEMO_NATS_ADDR): every decision evaluated"
	"$TMP/custody" serve --addr "$NOMEMO_ADDR" --nats-listen "$NOMEMO_NATS_ADDR" --data-dir "$TMP/data-nomemo" \
		--intent-key-file "$TMP/intent.key" --log-level error --decision-memo 0 >"$TMP/custody-nomemo.log" 2>&1 &
	NOMEMO_PID=$!
	wait_ready "custody --decision-memo 0" "$NOMEMO_PID" "http://$NOMEMO_ADDR/readyz" "$TMP/custody-nomemo.log"
fi
wait_ready OPA "$OPA_PID" "http://$OPA_ADDR/health" "$TMP/opa.log"
wait_ready custody "$CUSTODY_PID" "http://$CUSTODY_ADDR/readyz" "$TMP/custody.log"
sample_rss "$OPA_PID" "$TMP/rss-opa"
sample_rss "$CUSTODY_PID" "$TMP/rss-custody"
[[ $NOMEMO == 1 ]] && sample_rss "$NOMEMO_PID" "$TMP/rss-custody-nomemo"

# check set: custody and OPA must decide every body of the set alike.
check() {
	local line
	line=$("$TMP/genbodies" check -dir "$TMP/bodies" -set "$1" -custody "http://$CUSTODY_ADDR" -opa "http://$OPA_ADDR" -json) ||
		die "custody and OPA disagree on the ${1:-varied} bodies, or a server failed: the comparison would be meaningless"
	echo "$line" >>"$OUT"
	ANSWERED=$((ANSWERED + $(field custody_decisions "$line")))
}
log "checking that custody and OPA decide all $BODIES varied requests, and both shapes' bodies, alike"
check ""
check repeat
check distinct

# memo_counts: custody's decision memo hits and misses so far, "HITS MISSES".
memo_counts() {
	curl -fsS "http://$CUSTODY_ADDR/v1/policy" | sed -n 's/.*"memo_hits":\([0-9]*\),"memo_misses":\([0-9]*\).*/\1 \2/p'
}

# load name url shape conns duration: one closed-loop run of a shape's bodies against a server.
load() {
	local line bodies extra=() before after
	case $1 in opa*) bodies=$TMP/bodies/$3-opa.jsonl ;; *) bodies=$TMP/bodies/$3-custody.jsonl ;; esac
	[[ $3 == distinct ]] && extra=(-unique "@@UNIQUE@@")
	[[ $1 == custody* && $1 != custody-nomemo ]] && before=$(memo_counts)
	local pid t0 t1 n cpu
	case $1 in opa*) pid=$OPA_PID ;; custody-nomemo) pid=$NOMEMO_PID ;; *) pid=$CUSTODY_PID ;; esac
	t0=$(cpu_ticks "$pid")
	line=$("$TMP/loadgen" -name "$1" -shape "$3" -url "$2" -bodies "$bodies" "${extra[@]}" -c "$4" -d "$5" -warmup "$WARMUP" -json) || {
		FAILED=1
		log "FAILED REQUESTS in $1 $3 c=$4 (see above)"
	}
	[[ -n $line ]] || die "loadgen $1 gave no result"
	# The server's CPU per request over the whole run, warm-up included: what it costs to answer,
	# whatever the load generator on the same cores got of them.
	t1=$(cpu_ticks "$pid")
	n=$(($(field total_2xx "$line") + $(field total_failed "$line")))
	if ((n > 0)); then
		cpu=$(awk -v t=$((t1 - t0)) -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }')
		line="${line%\}},\"server_cpu_us_per_req\":$cpu}"
	fi
	echo "$line" >>"$OUT"
	if [[ $1 == custody-nomemo ]]; then
		NOMEMO_ANSWERED=$((NOMEMO_ANSWERED + $(field total_2xx "$line")))
	elif [[ $1 == custody* ]]; then
		ANSWERED=$((ANSWERED + $(field total_2xx "$line")))
		after=$(memo_counts)
		if [[ -n $before && -n $after ]]; then
			read -r h0 m0 <<<"$before"
			read -r h1 m1 <<<"$after"
			printf '{"name":"memo","shape":"%s","conns":%s,"hits":%d,"misses":%d}\n' "$3" "$4" $((h1 - h0)) $((m1 - m0)) >>"$OUT"
			log "custody's memo during that run: $((h1 - h0)) hits, $((m1 - m0)) misses"
		fi
	fi
}

for c in $CONNS; do
	for shape in $SHAPES; do
		for r in $(seq 1 "$ROUNDS"); do
			log "conns $c, shape $shape, round $r of $ROUNDS: OPA, then custody ($WARMUP warm-up + $DURATION each)"
			load opa "http://$OPA_ADDR/v1/data/custody/authz/decision" "$shape" "$c" "$DURATION"
			load custody "http://$CUSTODY_ADDR/v1/authorize" "$shape" "$c" "$DURATION"
			if [[ $NOMEMO == 1 ]]; then
				load custody-nomemo "http://$NOMEMO_ADDR/v1/authorize" "$shape" "$c" "$DURATION"
			fi
		done
	done
done
kill "${SAMPLERS[@]}" 2>/dev/null || true
SAMPLERS=()

log "checking again, now that custody answers repeats from its decision memo"
check ""
check repeat

if [[ $RSS_RUN == 1 ]]; then
	log "custody alone for $RSS_DURATION at $RSS_CONNS conns on the $RSS_SHAPE shape, RSS sampled every second"
	sample_rss "$CUSTODY_PID" "$TMP/rss-custody-long"
	load custody-rss "http://$CUSTODY_ADDR/v1/authorize" "$RSS_SHAPE" "$RSS_CONNS" "$RSS_DURATION"
	kill "${SAMPLERS[@]}" 2>/dev/null || true
	SAMPLERS=()
fi

line=
if ((BATCH_ROUNDS > 0)); then # BATCH_ROUNDS=0 skips the batch measurement
	log "AuthZEN: $BATCH_ROUNDS rounds of 100 single evaluations vs one batch of the same 100"
	line=$("$TMP/loadgen" batch -url "http://$CUSTODY_ADDR" -items "$TMP/bodies/authzen.jsonl" -n 100 -rounds "$BATCH_ROUNDS" -json) || {
		FAILED=1
		log "FAILED: AuthZEN batch measurement"
	}
fi
if [[ -n $line ]]; then
	echo "$line" >>"$OUT"
	ANSWERED=$((ANSWERED + $(field decisions "$line")))
fi

# The stream must hold one record for every decision custody answered.
metrics=$(curl -fsS "http://$CUSTODY_ADDR/metrics" | awk '/^custody_decisions_total/ { s += $2 } END { printf "%d", s }')
verify_out=$("$TMP/custody" verify --nats-url "nats://$NATS_ADDR" --data-dir "$TMP/data" \
	--pubkey "$("$TMP/custody" keys --data-dir "$TMP/data")" 2>&1) || true
records=$(sed -n 's/^read [0-9]* messages: \([0-9]*\) decision records.*/\1/p' <<<"$verify_out")

echo
echo "== results ($(nproc) CPUs; $DURATION measured after $WARMUP warm-up; rounds: $ROUNDS; raw lines in $OUT)"
"$TMP/loadgen" report -base opa -vs custody,custody-nomemo "$OUT"
for shape in $SHAPES; do
	read -r hits misses < <(awk -v s="\"shape\":\"$shape\"" 'index($0, "\"name\":\"memo\"") && index($0, s) {
		match($0, /"hits":[0-9]+/); h += substr($0, RSTART + 7, RLENGTH - 7)
		match($0, /"misses":[0-9]+/); m += substr($0, RSTART + 9, RLENGTH - 9)
	} END { printf "%d %d\n", h, m }' "$OUT")
	echo "decision memo (custody), $shape shape: $hits answered from memory, $misses evaluated"
done
echo
rss_summary "OPA (comparison runs)" "$TMP/rss-opa"
rss_summary "custody (comparison runs)" "$TMP/rss-custody"
[[ -s $TMP/rss-custody-nomemo ]] && rss_summary "custody, no memo (comparison)" "$TMP/rss-custody-nomemo"
if [[ -s $TMP/rss-custody-long ]]; then
	rss_summary "custody ($RSS_DURATION at $RSS_CONNS conns)" "$TMP/rss-custody-long"
	awk 'NR == 1 || NR % 10 == 0 { printf " %.0f", $2 / 1024 } END { printf "\n" }' "$TMP/rss-custody-long" |
		sed 's/^/    custody RSS every 10 s, MB:/'
fi
if [[ -n $line ]]; then
	echo
	echo "AuthZEN batch of 100: singles $(field single_ms_median "$line") ms, batch $(field batch_ms_median "$line") ms (medians of $BATCH_ROUNDS rounds): ratio single/batch $(printf '%.1f' "$(field ratio "$line")") (target >= 5)"
fi
echo
echo "decision records: custody answered $ANSWERED decisions; custody_decisions_total says $metrics; the stream holds ${records:-?}"
sed 's/^/    verify: /' <<<"$verify_out" | grep -v '^    verify: *$' | head -n 8
printf '{"name":"records","answered":%d,"metrics":%d,"stream":%d}\n' "$ANSWERED" "$metrics" "${records:-0}" >>"$OUT"
if [[ -z $records || $records != "$ANSWERED" ]]; then
	echo "FAIL: the stream's decision records (${records:-unknown}) differ from the decisions answered ($ANSWERED)"
	FAILED=1
fi
if [[ $NOMEMO == 1 ]]; then
	nm_out=$("$TMP/custody" verify --nats-url "nats://$NOMEMO_NATS_ADDR" --data-dir "$TMP/data-nomemo" \
		--pubkey "$("$TMP/custody" keys --data-dir "$TMP/data-nomemo")" 2>&1) || true
	nm_records=$(sed -n 's/^read [0-9]* messages: \([0-9]*\) decision records.*/\1/p' <<<"$nm_out")
	echo "decision records (custody --decision-memo 0): answered $NOMEMO_ANSWERED; the stream holds ${nm_records:-?}"
	if [[ -z $nm_records || $nm_records != "$NOMEMO_ANSWERED" ]]; then
		echo "FAIL: custody --decision-memo 0: the stream's decision records (${nm_records:-unknown}) differ from the decisions answered ($NOMEMO_ANSWERED)"
		FAILED=1
	fi
fi
if [[ $FAILED != 0 ]]; then
	echo "FAIL: see the messages above"
	exit 1
fi
echo "OK"
