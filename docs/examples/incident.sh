#!/usr/bin/env bash
# incident.sh builds the scenario of docs/incident.md against a running custody serve: one human
# request (correlation ID req-q3-close) fanned out to three agents, a tool call that custody
# denied and that ran anyway, and the log of the shared service account the agents act through.
#
# Start custody first, trusting the development issuer (see docs/incident.md):
#
#   custody keys dev-issuer --out dev-idp --quiet > /dev/null
#   custody serve --issuer https://idp.acme.example --jwks dev-idp/jwks.json --audience custody \
#     --checkpoint-interval 1s
#
# then run this script from the same directory. It needs curl and the custody binary; it writes
# svc-agents.jsonl, the service account's log. Environment: CUSTODY_URL (default
# http://127.0.0.1:8181), CUSTODY (the binary, default custody), DEV_IDP (default dev-idp).
set -euo pipefail

url="${CUSTODY_URL:-http://127.0.0.1:8181}"
custody="${CUSTODY:-custody}"
idp="${DEV_IDP:-dev-idp}"
corr="req-q3-close"

if [ ! -f "$idp/jwks.json" ]; then
	echo "incident.sh: no $idp/jwks.json: run '$custody keys dev-issuer --out $idp' and start serve with --issuer https://idp.acme.example --jwks $idp/jwks.json --audience custody" >&2
	exit 1
fi

# token SUB ACT SCOPE prints a delegation token from the development issuer: SUB delegates SCOPE
# to the agent ACT.
token() {
	"$custody" keys dev-issuer --out "$idp" --quiet --sub "$1" --act "$2" --scope "$3"
}

# post PATH BODY [CURL-ARGS...] sends BODY to custody and prints the answer; any HTTP error fails.
# An execution report is sent with the credential of the call it reports on: custody accepts a
# report only from the decision's caller (or the holder of its receipt).
post() {
	local path="$1" body="$2"
	shift 2
	curl -sS --fail-with-body "$url$path" -H 'Content-Type: application/json' -H "X-Correlation-ID: $corr" "$@" -d "$body"
}

# field NAME reads one string member from the JSON answer on stdin (no jq needed).
field() {
	sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"
}

now() { date -u +%Y-%m-%dT%H:%M:%SZ; }

mailer=$(token alice@acme.example spiffe://acme.example/agents/mailer "mail.send")
ops=$(token alice@acme.example spiffe://acme.example/agents/ops "files.write")

# Task t-mail: the mailer sends the Q3 numbers for Alice, with a verified delegation.
answer=$(post /v1/authorize '{
  "agent": {"id": "spiffe://acme.example/agents/mailer"},
  "tool": {"name": "send_email", "server": "mail", "arguments": {"to": "bob@acme.example"}},
  "resource": {"type": "mailbox", "id": "alice", "properties": {"owner": "alice@acme.example"}},
  "task": {"id": "t-mail", "parent_id": "t-plan", "attempt": 1, "intent": "close Q3: send the numbers to Bob"}
}' -H "Authorization: Bearer $mailer")
mail_decision=$(field decision_id <<<"$answer")
mail_receipt=$(field receipt <<<"$answer")
post /v1/executions '{"decision_id": "'"$mail_decision"'", "correlation_id": "'"$corr"'", "status": "succeeded",
  "target": {"system": "mail", "request_id": "msg-881", "resource": "alice"}}' -H "Authorization: Bearer $mailer" >/dev/null

# Task t-files: the ops agent writes the spreadsheet; the first attempt fails, the retry works.
for attempt in 1 2; do
	answer=$(post /v1/authorize '{
  "agent": {"id": "spiffe://acme.example/agents/ops"},
  "tool": {"name": "write_file", "server": "filesystem", "arguments": {"path": "q3.xlsx"}},
  "resource": {"type": "file", "id": "q3.xlsx", "properties": {"owner": "alice@acme.example"}},
  "task": {"id": "t-files", "parent_id": "t-plan", "attempt": '"$attempt"'}
}' -H "Authorization: Bearer $ops")
	files_decision=$(field decision_id <<<"$answer")
	if [ "$attempt" = 1 ]; then
		post /v1/executions '{"decision_id": "'"$files_decision"'", "correlation_id": "'"$corr"'", "status": "failed",
  "target": {"system": "files", "request_id": "w-17", "resource": "q3.xlsx"}, "error": "disk quota exceeded"}' -H "Authorization: Bearer $ops" >/dev/null
	else
		post /v1/executions '{"decision_id": "'"$files_decision"'", "correlation_id": "'"$corr"'", "status": "succeeded",
  "target": {"system": "files", "request_id": "w-18", "resource": "q3.xlsx"}}' -H "Authorization: Bearer $ops" >/dev/null
	fi
done

# Task t-pay: the ops agent asks to transfer funds with no token, only asserting Alice: denied
# (unverified_delegation). The payments system, called through the shared account, ran it anyway.
answer=$(post /v1/authorize '{
  "agent": {"id": "spiffe://acme.example/agents/ops"},
  "user": {"id": "alice@acme.example", "properties": {"scopes": ["payments.send"]}},
  "tool": {"name": "transfer_funds", "server": "payments", "arguments": {"amount": 1200, "currency": "EUR", "to": "acct-9"}},
  "resource": {"type": "account", "id": "acct-9", "properties": {"owner": "alice@acme.example"}},
  "task": {"id": "t-pay", "parent_id": "t-plan", "attempt": 1}
}')
pay_decision=$(field decision_id <<<"$answer")
post /v1/executions '{"decision_id": "'"$pay_decision"'", "correlation_id": "'"$corr"'", "status": "succeeded",
  "target": {"system": "payments", "request_id": "tx-2231", "resource": "acct-9"}}' >/dev/null

# The shared service account's own log, as the downstream systems wrote it.
t=$(now)
cat >svc-agents.jsonl <<EOF
{"time":"$t","account":"svc-agents","receipt":"$mail_receipt","action":"send_email","resource":"alice","msg":"sent"}
{"time":"$t","account":"svc-agents","decision_id":"$files_decision","action":"write_file","resource":"file/q3.xlsx"}
{"time":"$t","account":"svc-agents","action":"drop_table","resource":"customers"}
{"time":"$t","account":"svc-agents","correlation_id":"$corr","action":"export_contacts"}
{"time":"$t","account":"svc-agents","correlation_id":"$corr","decision_id":"$pay_decision","action":"transfer_funds","resource":"acct-9","msg":"transfer of 1200 EUR done"}
EOF

echo "incident.sh: 4 decisions and 4 execution reports under correlation ID $corr; the service account's log is svc-agents.jsonl"
