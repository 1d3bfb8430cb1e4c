package main

import (
	"testing"
	"time"
)

func TestHistogramBuckets(t *testing.T) {
	prev := -1
	for us := int64(1); us <= maxUS; us += 1 + us/300 {
		i := bucketOf(us)
		if i < prev || i >= nBuckets {
			t.Fatalf("bucketOf(%d) = %d after %d (of %d buckets)", us, i, prev, nBuckets)
		}
		prev = i
		if u := upper(i); u < us || float64(u-us) > float64(us)/128 {
			t.Fatalf("value %d µs: bucket %d ends at %d µs, more than 1/128 above", us, i, u)
		}
	}
}

func TestHistogramQuantiles(t *testing.T) {
	var h histogram
	for i := 1; i <= 1000; i++ {
		h.record(time.Duration(i) * time.Millisecond)
	}
	for _, c := range []struct{ q, want float64 }{{0.5, 500}, {0.99, 990}, {0.999, 999}, {1, 1000}} {
		if got := h.quantileMS(c.q); got < c.want || got > c.want*1.008 {
			t.Errorf("quantile %v = %v ms, want %v ms within 0.8%%", c.q, got, c.want)
		}
	}
}
