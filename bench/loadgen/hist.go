package main

import (
	"math/bits"
	"sync/atomic"
)

// Histogram counts microsecond values in log-linear buckets (exact below 1,024 µs,
// then 512 buckets per power of two, i.e. within 0.2 %). Goroutines add to it
// concurrently with atomics, so 10k readers need no per-connection histograms.
type Histogram struct {
	buckets [1024 + 40*512]atomic.Int64
	count   atomic.Int64
	max     atomic.Int64
}

func bucketOf(v int64) int {
	if v < 0 {
		v = 0
	}
	if v < 1024 {
		return int(v)
	}
	e := bits.Len64(uint64(v)) - 10 // v >> e is in [512, 1023]
	i := 1024 + (e-1)*512 + int(v>>e) - 512
	if i >= len(Histogram{}.buckets) {
		return len(Histogram{}.buckets) - 1
	}
	return i
}

// lowerBound is the smallest value that lands in bucket i.
func lowerBound(i int) int64 {
	if i < 1024 {
		return int64(i)
	}
	e := (i-1024)/512 + 1
	m := int64((i-1024)%512 + 512)
	return m << e
}

// Add records one value (µs).
func (h *Histogram) Add(v int64) {
	h.buckets[bucketOf(v)].Add(1)
	h.count.Add(1)
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			return
		}
	}
}

// Summary gives the count, percentiles (nearest rank, bucket lower bounds) and the max.
func (h *Histogram) Summary() map[string]any {
	n := h.count.Load()
	out := map[string]any{"count": n}
	if n == 0 {
		return out
	}
	qs := []struct {
		name string
		q    float64
	}{{"p50", 0.50}, {"p90", 0.90}, {"p99", 0.99}, {"p999", 0.999}}
	var seen int64
	qi := 0
	for i := range h.buckets {
		seen += h.buckets[i].Load()
		for qi < len(qs) && float64(seen) >= qs[qi].q*float64(n) {
			out[qs[qi].name] = lowerBound(i)
			qi++
		}
		if qi == len(qs) {
			break
		}
	}
	out["max"] = h.max.Load()
	return out
}
