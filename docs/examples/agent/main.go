// Command agent asks custody whether an agent may call a tool for a user, as an agent would
// before every tool call. It is the Go snippet of docs/agents.md, tested by docs/docs_test.go.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
)

// decision is the part of custody's answer an agent acts on.
type decision struct {
	DecisionID  string         `json:"decision_id"`
	Allow       bool           `json:"allow"`
	Reasons     []string       `json:"reasons"`
	Obligations map[string]any `json:"obligations"`
	Receipt     string         `json:"receipt"`
}

func authorize(pdp string, call map[string]any) (decision, error) {
	body, _ := json.Marshal(call)
	resp, err := http.Post(pdp+"/v1/authorize", "application/json", bytes.NewReader(body))
	if err != nil {
		return decision{}, err // custody unreachable: do not call the tool
	}
	defer resp.Body.Close()
	var d decision
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil || resp.StatusCode != http.StatusOK {
		return decision{}, fmt.Errorf("custody answered %s", resp.Status) // a 4xx or 503 is a deny
	}
	return d, nil
}

func main() {
	pdp := os.Getenv("CUSTODY_URL") // such as http://127.0.0.1:8181
	d, err := authorize(pdp, map[string]any{
		"agent": map[string]any{"id": "spiffe://acme.example/agents/mailer"},
		"user":  map[string]any{"id": "alice@acme.example", "properties": map[string]any{"scopes": []string{"mail.send"}}},
		"tool":  map[string]any{"name": "send_email", "server": "mail", "arguments": map[string]any{"to": "bob@acme.example"}},
	})
	if err != nil || !d.Allow || d.Obligations["require_approval"] == true {
		fmt.Println("do not call the tool:", d.Reasons, err)
		os.Exit(1)
	}
	fmt.Println("allowed: call the tool, forward the receipt; decision", d.DecisionID)
}
