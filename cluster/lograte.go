package cluster

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// gossipLogEvery: memberlist's error and warning lines of one kind are
// written at most once per this period; the next one says how many were
// left out.
const gossipLogEvery = 10 * time.Second

// maxLogKeys bounds the kinds of line a rateLimitedWriter remembers; past
// it, new kinds share one budget.
const maxLogKeys = 256

// rateLimitedWriter passes lines of a standard logger on to w, except that
// an "[ERR]" or "[WARN]" line whose kind (logKey) was written less than
// every ago is counted instead; the next one of that kind written carries
// the count. Other lines pass unchanged.
type rateLimitedWriter struct {
	w     io.Writer
	every time.Duration
	now   func() time.Time

	mu   sync.Mutex
	keys map[string]*logKind
	// limited counts the lines subject to the limit, written or not.
	limited int
}

type logKind struct {
	last       time.Time
	suppressed int
}

func newRateLimitedWriter(w io.Writer, every time.Duration) *rateLimitedWriter {
	return &rateLimitedWriter{w: w, every: every, now: time.Now, keys: map[string]*logKind{}}
}

func (r *rateLimitedWriter) Write(b []byte) (int, error) {
	line := strings.TrimRight(string(b), "\n")
	if !strings.Contains(line, "[ERR]") && !strings.Contains(line, "[ERROR]") && !strings.Contains(line, "[WARN]") {
		return r.w.Write(b)
	}
	now := r.now()
	r.mu.Lock()
	r.limited++
	key := logKey(line)
	k, ok := r.keys[key]
	if !ok && len(r.keys) >= maxLogKeys-1 { // one left for "other"
		for kk, v := range r.keys {
			if now.Sub(v.last) >= r.every && v.suppressed == 0 {
				delete(r.keys, kk)
			}
		}
		if len(r.keys) >= maxLogKeys-1 {
			key = "other"
			k, ok = r.keys[key]
		}
	}
	if !ok {
		k = &logKind{}
		r.keys[key] = k
	}
	if !k.last.IsZero() && now.Sub(k.last) < r.every {
		k.suppressed++
		r.mu.Unlock()
		return len(b), nil
	}
	suppressed := k.suppressed
	k.last, k.suppressed = now, 0
	r.mu.Unlock()
	if suppressed > 0 {
		line = fmt.Sprintf("%s (and %d more like it in the last %v, not logged)", line, suppressed, r.every)
	}
	if _, err := io.WriteString(r.w, line+"\n"); err != nil {
		return 0, err
	}
	return len(b), nil
}

// logKey is the kind of a log line: its first words up to the first colon
// after the component's, or its first five words, with digits dropped, so
// that addresses, counts and names a sender chooses do not make new kinds.
func logKey(line string) string {
	rest := line
	if i := strings.Index(rest, "memberlist: "); i >= 0 {
		rest = rest[i+len("memberlist: "):]
	}
	if i := strings.Index(rest, ":"); i >= 0 {
		rest = rest[:i]
	}
	words := strings.Fields(rest)
	if len(words) > 5 {
		words = words[:5]
	}
	key := strings.Join(words, " ")
	return strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return -1
		}
		return r
	}, key)
}

// limitedLines is how many lines were subject to the limit so far.
func (r *rateLimitedWriter) limitedLines() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.limited
}
