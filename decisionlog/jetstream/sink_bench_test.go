package jetstream_test

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/note"

	"github.com/custodyhq/custody/decisionlog"
	custodyjs "github.com/custodyhq/custody/decisionlog/jetstream"
	"github.com/custodyhq/custody/internal/natstest"
)

// BenchmarkPublishChained is serve's record path on the embedded server: chained records with a
// window, over the in-process connection. Each op is one record sent and acked. With one
// publisher ns/op is a record's latency; with four at once (as four connections), on two cores,
// it is close to the CPU a record costs.
func BenchmarkPublishChained(b *testing.B) {
	for _, publishers := range []int{1, 4} {
		b.Run(fmt.Sprintf("publishers=%d", publishers), func(b *testing.B) { benchmarkPublishChained(b, publishers) })
	}
}

func benchmarkPublishChained(b *testing.B, publishers int) {
	ns := natstest.Start(b)
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	stream, err := custodyjs.EnsureStream(b.Context(), js, custodyjs.StreamConfig{})
	if err != nil {
		b.Fatal(err)
	}
	skey, _, err := decisionlog.GenerateSigningKey(decisionlog.SigningKeyName("inst-b"))
	if err != nil {
		b.Fatal(err)
	}
	sig, err := note.NewSigner(skey)
	if err != nil {
		b.Fatal(err)
	}
	sink := custodyjs.NewSink(js, custodyjs.WithChain(custodyjs.ChainConfig{
		Instance: "inst-b", Signer: sig, Stream: stream, Window: 256,
	}))
	var next atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(max(publishers/runtime.GOMAXPROCS(0), 1))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1)
			if err := sink.Publish(b.Context(), record(fmt.Sprintf("b-%d", i), i%3 != 0)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	if err := sink.Close(b.Context()); err != nil {
		b.Fatal(err)
	}
}
