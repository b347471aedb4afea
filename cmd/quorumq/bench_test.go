//go:build unix

package main

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestHistogramBuckets(t *testing.T) {
	if i := histIndex(uint64(histHighest)); i >= histBuckets {
		t.Fatalf("60 s is in counter %d of %d", i, histBuckets)
	}
	// The counters tile the numbers without gaps or overlaps, and each
	// counter is at most 1/128 of its smallest value wide.
	next := uint64(0)
	for i := range histBuckets {
		lo, hi := histRange(i)
		if lo != next || hi < lo {
			t.Fatalf("counter %d holds [%d, %d], want it to start at %d", i, lo, hi, next)
		}
		if histIndex(lo) != i || histIndex(hi) != i {
			t.Fatalf("counter %d = [%d, %d], but histIndex gives %d and %d", i, lo, hi, histIndex(lo), histIndex(hi))
		}
		if lo >= 256 && float64(hi-lo+1)/float64(lo) > 1.0/128 {
			t.Fatalf("counter %d = [%d, %d] is too wide", i, lo, hi)
		}
		next = hi + 1
	}
}

// Percentiles are within 1% of the exact ones of the sorted values.
func TestHistogramQuantiles(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	logUniform := func(lo, hi time.Duration) time.Duration {
		return time.Duration(math.Exp(math.Log(float64(lo)) + r.Float64()*(math.Log(float64(hi))-math.Log(float64(lo)))))
	}
	for name, gen := range map[string]func() time.Duration{
		"log-uniform 1µs-60s": func() time.Duration { return logUniform(time.Microsecond, 60*time.Second) },
		"normal 2ms":          func() time.Duration { return max(time.Duration(2e6+r.NormFloat64()*3e5), time.Microsecond) },
		"uniform 100µs-200µs": func() time.Duration { return time.Duration(100e3 + r.Int64N(100e3)) },
		"long tail": func() time.Duration {
			if r.IntN(1000) == 0 {
				return logUniform(time.Second, 30*time.Second)
			}
			return logUniform(500*time.Microsecond, 5*time.Millisecond)
		},
		"constant": func() time.Duration { return 1234567 * time.Nanosecond },
	} {
		for _, n := range []int{1, 7, 1000, 100_000} {
			h := &histogram{}
			vals := make([]time.Duration, n)
			for i := range vals {
				vals[i] = gen()
				h.record(vals[i])
			}
			slices.Sort(vals)
			if h.count() != uint64(n) {
				t.Fatalf("%s: count %d, want %d", name, h.count(), n)
			}
			for _, q := range []float64{0, 0.5, 0.9, 0.99, 0.999, 0.9999} {
				rank := max(int(math.Ceil(q*float64(n))), 1)
				want, got := vals[rank-1], h.quantile(q)
				if rel := math.Abs(float64(got-want)) / float64(want); rel > 0.01 {
					t.Errorf("%s, n=%d: quantile(%v) = %v, want %v (error %.2f%%)", name, n, q, got, want, 100*rel)
				}
			}
			if got, want := h.quantile(1), vals[n-1]; got != want {
				t.Errorf("%s, n=%d: max %v, want %v", name, n, got, want)
			}
		}
	}
}

func TestHistogramMergeAndClamp(t *testing.T) {
	var a, b, all histogram
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 10_000 {
		d := time.Duration(r.Int64N(int64(time.Second)))
		all.record(d)
		if i%3 == 0 {
			a.record(d)
		} else {
			b.record(d)
		}
	}
	a.merge(&b)
	a.merge(&histogram{}) // an empty one changes nothing
	if a != all {
		t.Errorf("merged histogram differs from the one of all values")
	}

	var h histogram
	if h.quantile(0.5) != 0 || h.summary() != (latencySummary{}) {
		t.Errorf("empty histogram: p50 %v, summary %+v", h.quantile(0.5), h.summary())
	}
	h.record(0)
	h.record(2 * time.Minute) // beyond the range: counted as 60 s
	if got := h.quantile(0.5); got < 990*time.Nanosecond || got > 1010*time.Nanosecond {
		t.Errorf("p50 of {0, 2m} = %v; want 1µs, the histogram's floor", got)
	}
	if got := h.quantile(0.99); got != 2*time.Minute {
		t.Errorf("p99 of {0, 2m} = %v; want the maximum, 2m", got)
	}
	s := h.summary()
	if s.Max != 120e6 {
		t.Errorf("summary max %v µs, want 120e6", s.Max)
	}
}

func TestPacer(t *testing.T) {
	if w := newPacer(0).reserve(time.Now()); w != 0 {
		t.Errorf("unlimited pacer waits %v", w)
	}
	p := newPacer(1000) // one per ms
	t0 := time.Unix(1000, 0)
	for i := range 5 {
		if w, want := p.reserve(t0), time.Duration(i)*time.Millisecond; w != want {
			t.Errorf("reservation %d at one instant: wait %v, want %v", i, w, want)
		}
	}
	// After a long stall, the schedule restarts at most paceSlack behind
	// the clock: 10 sends at once, then one per ms again.
	t1 := t0.Add(time.Second)
	burst := 0
	for p.reserve(t1) <= 0 {
		burst++
	}
	if want := int(paceSlack/time.Millisecond) + 1; burst != want {
		t.Errorf("after a stall, %d sends without waiting; want %d", burst, want)
	}

	// A caller that sleeps what it is told, plus an oversleep, still keeps
	// the rate.
	for _, rate := range []int{50, 1000, 20_000, 400_000} {
		p := newPacer(rate)
		now := t0
		const n = 20_000
		for range n {
			if w := p.reserve(now); w > 0 {
				now = now.Add(w + 300*time.Microsecond)
			}
		}
		got := float64(n) / now.Sub(t0).Seconds()
		if math.Abs(got-float64(rate))/float64(rate) > 0.01 {
			t.Errorf("rate %d: paced to %.0f msgs/s", rate, got)
		}
	}
}

func TestStamp(t *testing.T) {
	p := make([]byte, 64)
	at := time.Unix(1_700_000_000, 123456789)
	putStamp(p, at, 0xabcdef, 1<<40-1)
	sent, tag, seq, ok := readStamp(p)
	if !ok || !sent.Equal(at) || tag != 0xabcdef || seq != 1<<40-1 {
		t.Errorf("readStamp = %v, %x, %d, %v", sent, tag, seq, ok)
	}
	if _, _, _, ok := readStamp(p[:15]); ok {
		t.Error("readStamp of 15 bytes is ok")
	}
}

func TestTracker(t *testing.T) {
	tr := &tracker{}
	at := time.Unix(10, 0)
	tr.markSeen([]uint64{3, 5}, 0, at) // received before its enqueue was answered
	for s := range uint64(200) {
		if s != 7 && s != 150 {
			tr.markSent(s)
		}
	}
	tr.markSent(5) // twice: counted once
	if got := tr.missing(); got != 196 {
		t.Errorf("missing %d, want 196", got)
	}
	var all []uint64
	for s := range uint64(200) {
		if s != 3 && s != 42 && s != 199 {
			all = append(all, s)
		}
	}
	tr.markSeen(all, 2, at.Add(time.Second))
	tr.markSeen([]uint64{9, 9}, 0, at.Add(2*time.Second))
	if tr.nDup != 3 || tr.nForeign != 2 || tr.nSeen != 198 || !tr.lastReceived().Equal(at.Add(time.Second)) {
		t.Errorf("dup %d, foreign %d, seen %d, last %v", tr.nDup, tr.nForeign, tr.nSeen, tr.lastReceived())
	}
	if got := tr.missing(); got != 2 {
		t.Errorf("missing %d, want 2 (42 and 199)", got)
	}
	if got := tr.lostSeqs(5); !slices.Equal(got, []uint64{42, 199}) {
		t.Errorf("lostSeqs = %v", got)
	}
	if got := tr.lostSeqs(1); !slices.Equal(got, []uint64{42}) {
		t.Errorf("lostSeqs(1) = %v", got)
	}
}

func TestTake(t *testing.T) {
	var b atomic.Int64
	b.Store(250)
	var got []int
	for n := take(&b, 100); n > 0; n = take(&b, 100) {
		got = append(got, n)
	}
	if !slices.Equal(got, []int{100, 100, 50}) || b.Load() != 0 {
		t.Errorf("takes %v, left %d", got, b.Load())
	}
}

func TestFmtMicros(t *testing.T) {
	for us, want := range map[float64]string{0: "0", 3.25: "3.2µs", 812.4: "812µs", 1234: "1.23ms", 2.5e6: "2.50s"} {
		if got := fmtMicros(us); got != want {
			t.Errorf("fmtMicros(%v) = %q, want %q", us, got, want)
		}
	}
}

func TestBenchUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"bench", "--mode", "fast"},
		{"bench", "--msgs", "0"},
		{"bench", "--msgs", "10", "--duration", "1s"},
		{"bench", "--duration", "0s"},
		{"bench", "--producers", "0"},
		{"bench", "--consumers", "-1"},
		{"bench", "--mode", "consume", "--consumers", "0"},
		{"bench", "--mode", "e2e", "--size", "15"},
		{"bench", "--size", "2000000"},
		{"bench", "--batch", "0"},
		{"bench", "--batch", "1001"},
		{"bench", "--rate", "-1"},
		{"bench", "--in-flight", "0"},
		{"bench", "--linger", "-1s"},
		{"bench", "--partitions", "3"},
		{"bench", "--create", "--replicas", "0"},
		{"bench", "extra"},
		{"bench", "--bogus"},
	} {
		_, stderr, code := runCLI(t, "", args...)
		if code != 2 || !strings.HasPrefix(stderr, "quorumq: ") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%q: exit %d, stderr %q; want exit 2 and one line", args, code, stderr)
		}
	}
}

// benchJSON is the part of bench -o json the tests look at.
type benchJSON struct {
	Mode       string  `json:"mode"`
	Msgs       int64   `json:"msgs"`
	Seconds    float64 `json:"seconds"`
	MsgsPerSec float64 `json:"msgs_per_sec"`
	MBPerSec   float64 `json:"mb_per_sec"`
	LatencyUS  struct {
		P50, P90, P99, P999, Max float64
	} `json:"latency_us"`
	Lost       int64 `json:"lost"`
	Duplicates int64 `json:"duplicates"`
	Size       int   `json:"size"`
	Producers  int   `json:"producers"`
	Consumers  int   `json:"consumers"`
	Phases     []struct {
		Phase string `json:"phase"`
		Msgs  int64  `json:"msgs"`
	} `json:"phases"`
}

func TestBenchEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test starts a 3-node cluster; skipped with -short")
	}
	d := startDev(t, 3)
	d.waitReady(t, 3)
	bench := func(args ...string) benchJSON {
		t.Helper()
		r := quorumq(t, append([]string{"bench", "--servers", d.servers, "-o", "json"}, args...)...)
		if r.code != 0 {
			t.Fatalf("bench %q: %v", args, r)
		}
		var got benchJSON
		if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || strings.Count(r.stdout, "\n") != 1 {
			t.Fatalf("bench %q: output is not one JSON object (%v): %q", args, err, r.stdout)
		}
		return got
	}

	got := bench("--create", "--mode", "e2e", "--producers", "2", "--consumers", "2", "--msgs", "2000", "--size", "64")
	if got.Mode != "e2e" || got.Msgs != 2000 || got.Lost != 0 || got.Duplicates != 0 || got.MsgsPerSec <= 0 ||
		got.Producers != 2 || got.Consumers != 2 || got.Size != 64 {
		t.Errorf("e2e: %+v", got)
	}
	if l := got.LatencyUS; l.P50 <= 0 || l.P50 > l.P90 || l.P90 > l.P99 || l.P99 > l.P999 || l.P999 > l.Max {
		t.Errorf("e2e latencies out of order: %+v", l)
	}
	if len(got.Phases) != 2 || got.Phases[0].Phase != "enqueue" || got.Phases[0].Msgs != 2000 || got.Phases[1].Phase != "e2e" {
		t.Errorf("e2e phases: %+v", got.Phases)
	}

	got = bench("--mode", "enqueue", "--msgs", "1000")
	if got.Mode != "enqueue" || got.Msgs != 1000 || got.MsgsPerSec <= 0 || got.MBPerSec <= 0 || got.LatencyUS.P50 <= 0 || got.Consumers != 0 {
		t.Errorf("enqueue: %+v", got)
	}

	// The 1000 messages just enqueued are there: no pre-fill.
	got = bench("--mode", "consume", "--msgs", "1000", "--consumers", "2")
	if got.Mode != "consume" || got.Msgs != 1000 || len(got.Phases) != 1 || got.LatencyUS.P50 <= 0 {
		t.Errorf("consume: %+v", got)
	}
}
