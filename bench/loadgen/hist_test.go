package main

import "testing"

func TestBucketsRoundTrip(t *testing.T) {
	for _, v := range []int64{0, 1, 1023, 1024, 1025, 2047, 2048, 5000, 123456, 10_000_000} {
		lb := lowerBound(bucketOf(v))
		if lb > v || float64(v-lb) > 0.002*float64(v)+1 {
			t.Fatalf("value %d -> bucket lower bound %d", v, lb)
		}
	}
}

func TestSummary(t *testing.T) {
	var h Histogram
	for v := int64(1); v <= 1000; v++ {
		h.Add(v)
	}
	s := h.Summary()
	if s["count"].(int64) != 1000 || s["p50"].(int64) != 500 || s["p99"].(int64) != 990 || s["max"].(int64) != 1000 {
		t.Fatalf("summary %v", s)
	}
}
