"""Ask custody whether an agent may call a tool for a user: the Python snippet of docs/agents.md."""
import json
import os
import urllib.request

def authorize(pdp, call):
    req = urllib.request.Request(pdp + "/v1/authorize", data=json.dumps(call).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:  # a 4xx or 503 raises: a deny
        return json.load(resp)

d = authorize(os.environ["CUSTODY_URL"], {
    "agent": {"id": "spiffe://acme.example/agents/mailer"},
    "user": {"id": "alice@acme.example", "properties": {"scopes": ["mail.send"]}},
    "tool": {"name": "send_email", "server": "mail", "arguments": {"to": "bob@acme.example"}},
})
if not d["allow"] or d["obligations"].get("require_approval"):
    raise SystemExit("do not call the tool: %s" % d["reasons"])
print("allowed: call the tool, forward the receipt; decision", d["decision_id"])
