// Package forward delivers the CUSTODY stream to a SIEM: at least once, in stream order, in
// batches, to an HTTP endpoint (NDJSON or Splunk HTTP Event Collector) or to rotating files.
//
// Delivery is confirmed by the receiver (a 2xx answer, or a synced file) before the cursor moves
// past a batch, so a crash or an outage re-sends at most the batches in flight and never skips
// one. Every failed attempt waits a capped backoff and is retried, whatever the receiver
// answered: a record is never dropped, and a receiver that refuses (4xx) or hangs (per-request
// timeout) makes the forwarder unhealthy and lagging, which /healthz and the lag metric show,
// rather than busy or lossy.
package forward
