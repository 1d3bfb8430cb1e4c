package receipt_test

import (
	"context"
	"log"
	"net/http"

	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jwt"
)

// A downstream system checks the receipt an agent forwards and logs its decision ID, which joins
// the system's log to the decision stream (see custody correlate). Compiled, not run.
func Example_downstreamCheck() {
	keys, err := jwk.Fetch(context.Background(), "https://pdp.example.com/.well-known/jwks.json")
	if err != nil {
		log.Fatal(err)
	}
	http.HandleFunc("/send", func(w http.ResponseWriter, r *http.Request) {
		tok, err := jwt.Parse([]byte(r.Header.Get("Custody-Receipt")), jwt.WithKeySet(keys))
		var decisionID, action string
		if err == nil {
			err = tok.Get("decision_id", &decisionID)
		}
		if err == nil {
			err = tok.Get("action", &action)
		}
		if err != nil || action != "send_email" {
			http.Error(w, "no valid custody receipt for send_email", http.StatusForbidden)
			return
		}
		log.Printf(`{"decision_id":%q,"action":"send_email"}`, decisionID) // now joinable
		// ... send the email ...
	})
}
