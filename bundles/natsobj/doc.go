// Package natsobj keeps a fleet of custody instances on one policy bundle: a bundle pushed to a
// NATS JetStream Object Store bucket is loaded, verified and swapped in by every instance
// watching that bucket.
package natsobj
