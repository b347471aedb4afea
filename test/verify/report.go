package verify

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Summary is the verdict in one line: PASS or FAIL, and the violations.
func (v *Verdict) Summary() string {
	t := &v.Total
	if v.OK() {
		return "PASS: nothing lost, unexpected, resurrected or out of order"
	}
	var parts []string
	for _, p := range []struct {
		n    int
		what string
	}{{t.Lost, "lost"}, {t.Unexpected, "unexpected"}, {t.Resurrected, "resurrected"}, {t.OrderViolations, "out of order"}} {
		if p.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", p.n, p.what))
		}
	}
	return "FAIL: " + strings.Join(parts, ", ")
}

// WriteText writes the verdict for people, on about one screen: the
// summary, the totals, a table of every queue and partition, and examples
// of each violation.
func (v *Verdict) WriteText(w io.Writer) error {
	t := &v.Total
	d := t.Duplicates
	var b strings.Builder
	fmt.Fprintf(&b, "verify: %s\n", v.Summary())
	fmt.Fprintf(&b, "enqueues: %d ok, %d unknown (%d of them recovered), %d failed\n",
		t.EnqueuedOK, t.EnqueuedUnknown, t.Recovered, t.EnqueueFailed)
	fmt.Fprintf(&b, "deliveries: %d, acked %d, dead-lettered %d\n", t.Delivered, t.Acked, t.DeadLettered)
	fmt.Fprintf(&b, "duplicates: %d (lease expiry %d, requeue %d, failover %d, stored twice %d)\n\n",
		d.Total(), d.LeaseExpiry, d.Requeue, d.Failover, d.DoubleStore)
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(cells ...string) { _, _ = io.WriteString(tw, strings.Join(cells, "\t")+"\n") }
	row("QUEUE", "PART", "ENQUEUED", "RECOVERED", "DELIVERED", "ACKED", "DEAD", "DUPS", "LOST", "UNEXPECTED", "RESURRECTED", "ORDER")
	line := func(q, p string, c *Counts, ordered bool) {
		order := "-"
		if ordered {
			order = strconv.Itoa(c.OrderViolations)
		}
		n := strconv.Itoa
		row(q, p, n(c.EnqueuedOK), n(c.Recovered), n(c.Delivered), n(c.Acked), n(c.DeadLettered), n(c.Duplicates.Total()),
			n(c.Lost), n(c.Unexpected), n(c.Resurrected), order)
	}
	for i := range v.Queues {
		q := &v.Queues[i]
		line(q.Queue, "all", &q.Counts, q.OrderChecked)
		for j := range q.Partitions {
			p := &q.Partitions[j]
			line("", strconv.FormatUint(uint64(p.Partition), 10), &p.Counts, q.OrderChecked)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	b.Reset()
	for i := range v.Queues {
		if q := &v.Queues[i]; !q.OrderChecked {
			fmt.Fprintf(&b, "order of %s: %s\n", q.Queue, q.OrderNote)
		}
	}
	for i := range v.Queues {
		q := &v.Queues[i]
		for _, p := range q.Problems {
			fmt.Fprintf(&b, "%-11s %s/%d", p.Kind, p.Queue, p.Partition)
			if p.Msg != "" {
				fmt.Fprintf(&b, " msg %s", p.Msg)
			}
			fmt.Fprintf(&b, ": %s\n", p.Detail)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
