package receipt_test

import (
	"context"
	"encoding/json"
	"log"
	"net/http"

	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/custodyhq/custody/receipt"
)

// A downstream system checks the receipt an agent forwards against the call it is about to run,
// and logs its decision ID, which joins the system's log to the decision stream (see custody
// correlate). Compiled, not run.
func Example_downstreamCheck() {
	keys, err := jwk.Fetch(context.Background(), "https://pdp.example.com/.well-known/jwks.json")
	if err != nil {
		log.Fatal(err)
	}
	http.HandleFunc("/send", func(w http.ResponseWriter, r *http.Request) {
		var msg struct {
			User string         `json:"user"`
			Args map[string]any `json:"arguments"`
		}
		if err := json.NewDecoder(r.Body).Decode(&msg); err != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		claims, err := receipt.Verify(r.Header.Get(receipt.Header), keys, receipt.Expected{
			Call: receipt.Call{
				Tool: "send_email", Server: "mail", Arguments: msg.Args,
				Resource: receipt.Resource{Type: "mailbox", ID: msg.User}, Subject: msg.User,
			},
			Audience: "mail-gw.acme.example", // the Custody-Receipt-Audience the agent sent
		})
		if err != nil {
			http.Error(w, "no valid custody receipt for this call: "+err.Error(), http.StatusForbidden)
			return
		}
		log.Printf(`{"decision_id":%q,"action":"send_email"}`, claims.DecisionID) // now joinable
		// ... send the email ...
	})
}
