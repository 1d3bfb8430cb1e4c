package server

import "testing"

// BenchmarkDecodeAuthorize is the strict decode of a typical native body, the part of every
// request that the profile puts first.
func BenchmarkDecodeAuthorize(b *testing.B) {
	body := []byte(`{"agent":{"id":"spiffe://acme.example/agents/mailer"},"user":{"id":"alice@acme.example","properties":{"roles":["employee"],"scopes":["mail.send"]}},"tool":{"name":"send_email","server":"mail","arguments":{"to":"bob@acme.example","subject":"hi","body":"see you"}},"resource":{"type":"mailbox","id":"alice","properties":{"owner":"alice@acme.example"}},"task":{"id":"t-42","attempt":1,"session_id":"s-7"},"context":{"channel":"chat"}}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeAuthorize(body); err != nil {
			b.Fatal(err)
		}
	}
}
