package server

import "testing"

// decodeBenchBodies are native bodies for BenchmarkDecodeAuthorize: "typical" is a hand-written
// body; "distinct-*" are lines of the load test's distinct traffic (test/load/genbodies, with the
// unique marker filled in); "escaped" has string escapes, which take the unescaping path.
var decodeBenchBodies = []struct{ name, body string }{
	{"typical", `{"agent":{"id":"spiffe://acme.example/agents/mailer"},"user":{"id":"alice@acme.example","properties":{"roles":["employee"],"scopes":["mail.send"]}},"tool":{"name":"send_email","server":"mail","arguments":{"to":"bob@acme.example","subject":"hi","body":"see you"}},"resource":{"type":"mailbox","id":"alice","properties":{"owner":"alice@acme.example"}},"task":{"id":"t-42","attempt":1,"session_id":"s-7"},"context":{"channel":"chat"}}`},
	{"distinct-researcher", `{"correlation_id":"load-1-00000","agent":{"id":"spiffe://acme.example/agents/researcher","properties":{"deployment":"prod-1","model":"gpt-x"}},"user":{"id":"user12@acme.example","properties":{"roles":["employee"],"scopes":["contacts.read","files.read","mail.send","tickets.write","web.search","u-7f3a9c"]}},"tool":{"name":"create_ticket","server":"filesystem","arguments":{"priority":"high","title":"issue 0"}},"task":{"id":"t-1-00000","attempt":1,"session_id":"s-36"}}`},
	{"distinct-mailer", `{"correlation_id":"load-1-00002","agent":{"id":"spiffe://acme.example/agents/mailer"},"user":{"id":"user03@acme.example","properties":{"roles":["employee"],"scopes":["contacts.read","mail.send","payments.send","web.search","u-7f3a9c"]}},"tool":{"name":"search_contacts","arguments":{"query":"acme pricing"}},"context":{"channel":"web","client_ip":"10.0.164.146"}}`},
	{"escaped", `{"agent":{"id":"spiffe://acme.example/agents/mailer"},"tool":{"name":"send_email","arguments":{"body":"line one\nline two \"quoted\" caf\u00e9 \ud83d\ude00","n":[1,2.5,-3e2]}},"task":{"id":"t-1","intent":"write to bob\tnow"}}`},
}

// BenchmarkDecodeAuthorize is the strict decode of native bodies, the part of every request that
// the profile puts first.
func BenchmarkDecodeAuthorize(b *testing.B) {
	for _, bb := range decodeBenchBodies {
		body := []byte(bb.body)
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if _, err := decodeAuthorize(body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
