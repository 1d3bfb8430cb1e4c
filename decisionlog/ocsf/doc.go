// Package ocsf maps custody's stream messages to OCSF events (Open Cybersecurity Schema
// Framework, schema 1.9.0-dev), the form SIEMs and security data lakes (Amazon Security Lake,
// Splunk, Sentinel) read.
//
// Decisions and executions become API Activity events (class 6003) with the ai_operation,
// security_control and trace profiles; checkpoints and messages custody cannot read become Base
// Events (class 0), so that nothing on the stream is left out of a SIEM. What has no OCSF home
// is kept under unmapped.custody. The mapping reads each message's published JSON, its wire
// form, and never the engine's Go types, so it changes only when the wire format does.
//
// The mapping is versioned (MappingVersion, in metadata.log_version); docs/siem.md documents it
// field by field.
package ocsf
