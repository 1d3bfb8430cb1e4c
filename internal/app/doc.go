// Package app wires custody's PDP: the data dir's lock, the policy engine and its source, the
// embedded or external NATS server, the CUSTODY stream and its guard, the decision recorder
// (ack or spool mode), receipts and the HTTP API. `custody serve`, the in-process PDP of
// `custody mcp`, benchmarks and tests build the same App, so that what they run is what ships.
//
// New acquires everything and opens the HTTP listener, so the address is known before Run;
// Run owns every goroutine the App starts and stops them before it returns; Close gives back
// what New took.
package app
