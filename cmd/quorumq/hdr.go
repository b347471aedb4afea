package main

import (
	"math/bits"
	"time"
)

// histogram is a latency histogram in the manner of HdrHistogram: buckets
// that are linear within each power of two and logarithmic across them,
// with 128 to 256 sub-buckets per power, so that any recorded value is
// known to better than 2 significant digits (a bucket is at most 1/128 of
// its lowest value wide; the midpoint reported is within 0.4%). It covers
// 1 µs to 60 s: smaller values count as 1 µs, larger ones as 60 s, and the
// true maximum is kept apart.
//
// The counts take 30 KiB. A histogram is not safe for concurrent use: give
// each goroutine its own and merge them.
type histogram struct {
	counts   [histBuckets]uint64
	total    uint64
	min, max time.Duration // of the values recorded, before clamping
}

const (
	histSubBits = 8 // 2^8 = 256 sub-buckets in the first bucket, 128 in the others
	histHalf    = 1 << (histSubBits - 1)
	histLowest  = time.Microsecond
	histHighest = 60 * time.Second
)

// histBuckets is the number of counters up to histHighest: 60 s is a
// 36-bit number of nanoseconds, in bucket 36-8 = 28, the last one.
const histBuckets = (36 - histSubBits + 2) * histHalf

// histTop is the counter of 60 s, where larger values are counted too.
var histTop = histIndex(uint64(histHighest))

// histIndex is the bucket of v (in ns). Bucket b >= 1 holds the values in
// [2^(b+7), 2^(b+8)), split in 128 steps of 2^b; bucket 0 holds [0, 256)
// exactly. Counter i of bucket b is at b*128 + (v >> b), which runs on
// without gaps from one bucket to the next.
func histIndex(v uint64) int {
	b := bits.Len64(v|(1<<histSubBits-1)) - histSubBits
	return b*histHalf + int(v>>uint(b))
}

// histRange is the smallest and largest value (in ns) of counter i.
func histRange(i int) (lo, hi uint64) {
	b := 0
	if i >= 2*histHalf {
		b = i/histHalf - 1
	}
	sub := uint64(i - b*histHalf)
	return sub << uint(b), (sub+1)<<uint(b) - 1
}

// record adds one value.
func (h *histogram) record(d time.Duration) {
	if h.total == 0 || d < h.min {
		h.min = d
	}
	if d > h.max {
		h.max = d
	}
	h.counts[histIndex(uint64(min(max(d, histLowest), histHighest)))]++
	h.total++
}

// merge adds o's values to h.
func (h *histogram) merge(o *histogram) {
	if o.total == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.total == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.total += o.total
}

// count is the number of values recorded.
func (h *histogram) count() uint64 { return h.total }

// quantile is the value below or at which a fraction q (0 to 1) of the
// values lie: the value of rank ceil(q*n) in sorted order, as the midpoint
// of its bucket (clamped to the extremes recorded; the maximum in the
// last bucket, where values past 60 s are). q >= 1 is the exact maximum.
// An empty histogram answers 0.
func (h *histogram) quantile(q float64) time.Duration {
	if h.total == 0 {
		return 0
	}
	if q >= 1 {
		return h.max
	}
	rank := uint64(q * float64(h.total))
	if float64(rank) < q*float64(h.total) {
		rank++ // ceil
	}
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			if i == histTop {
				return h.max // values clamped to 60 s: what they were is unknown
			}
			lo, hi := histRange(i)
			v := time.Duration(lo + (hi-lo)/2)
			return min(max(v, h.min), h.max)
		}
	}
	return h.max
}

// latencySummary is what bench reports of a histogram, in microseconds.
type latencySummary struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
}

func (h *histogram) summary() latencySummary {
	us := func(d time.Duration) float64 {
		return float64(d.Round(100*time.Nanosecond)) / float64(time.Microsecond)
	}
	return latencySummary{
		P50:  us(h.quantile(0.50)),
		P90:  us(h.quantile(0.90)),
		P99:  us(h.quantile(0.99)),
		P999: us(h.quantile(0.999)),
		Max:  us(h.quantile(1)),
	}
}
