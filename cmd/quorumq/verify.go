package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/quorumq/quorumq/test/verify"
)

// verifyOpts are the flags of verify.
type verifyOpts struct {
	duration        time.Duration
	producers       int
	consumers       int
	rate            float64
	queues          int
	partitions      uint32
	replicas        uint32
	requeueFraction float64
	expireFraction  float64
	history         string
	check           string
	seed            uint64
	drainTimeout    time.Duration
	convergeTimeout time.Duration
	keep            bool
}

// verifyWorkloadFlags are the flags that shape a run; --check takes none.
var verifyWorkloadFlags = []string{"duration", "producers", "consumers", "rate", "queues", "partitions", "replicas",
	"requeue-fraction", "expire-fraction", "seed", "drain-timeout", "converge-timeout", "keep-queues"}

func (a *app) verifyCmd() *cobra.Command {
	o := &verifyOpts{}
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check that the cluster loses nothing it acknowledged",
		Long: `Run a checked workload against the cluster, ideally while a chaos tool breaks
it, and say whether the cluster kept its promises.

For --duration, --producers enqueue messages (at --rate messages per second
in all, in small batches), each with a unique id in its payload and a dedup
id, and --consumers receive and ack them; --requeue-fraction of the
deliveries are requeued instead, and --expire-fraction of the receives take
a message and let its lease expire. It uses --queues new queues of
--partitions partitions of --replicas replicas each. Every call and its
outcome (ok, failed, or unknown: timed out, connection lost) is recorded.

Then it drains every queue (receiving and acking until each is empty,
waiting out leases), lists the dead letters, and checks the history:
  lost         a message whose enqueue was acknowledged and that was never
               delivered nor dead-lettered
  unexpected   a message delivered that was never enqueued
  resurrected  a message delivered again after its ack was confirmed
  order        a partition's first deliveries out of sequence order (only
               checked when nothing is requeued or let expire)
Duplicate deliveries are allowed (at least once) and counted by cause. Last,
every replica of every partition must reach the same state checksum at the
same applied index.

It prints the verdict (a table, or -o json) and exits 1 on any violation, if
the drain did not finish within --drain-timeout, or if the replicas did not
converge within --converge-timeout. A passing run deletes its queues unless
--keep-queues; a failing one keeps them. --history writes every operation
as JSON lines; --check judges such a file again, without a cluster.

Stop the faults before the run ends: the drain and the convergence check
need a healed cluster. Ctrl-C ends the run early and goes on to the drain.`,
		Example: `  quorumq verify --duration 5m                 # while your chaos tool runs
  quorumq verify --duration 30s --requeue-fraction 0 --expire-fraction 0   # checks order too
  quorumq verify --rate 1000 --producers 8 --consumers 8 --history run.jsonl -o json
  quorumq verify --check run.jsonl`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(cmd); err != nil {
				return err
			}
			if o.check != "" {
				return a.verifyFile(o)
			}
			return a.verify(cmd.Context(), o)
		},
	}
	fs := cmd.Flags()
	fs.DurationVar(&o.duration, "duration", 30*time.Second, "how long producers and consumers run")
	fs.IntVar(&o.producers, "producers", 2, "concurrent producers")
	fs.IntVar(&o.consumers, "consumers", 2, "concurrent consumers")
	fs.Float64Var(&o.rate, "rate", 100, "messages per second of all producers together; 0 = as fast as possible")
	fs.IntVar(&o.queues, "queues", 1, "queues to create and use")
	fs.Uint32Var(&o.partitions, "partitions", 3, "partitions of each queue")
	fs.Uint32Var(&o.replicas, "replicas", 3, "replicas of each partition")
	fs.Float64Var(&o.requeueFraction, "requeue-fraction", 0.05, "fraction of deliveries requeued (after 100ms) instead of acked")
	fs.Float64Var(&o.expireFraction, "expire-fraction", 0.02, "fraction of receives whose message is left to expire (1s lease)")
	fs.StringVar(&o.history, "history", "", "write the history (JSON lines) to this file")
	fs.StringVar(&o.check, "check", "", "only check the history in this file")
	fs.Uint64Var(&o.seed, "seed", 0, "seed of the workload's choices (0: random; the one used is printed)")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", 2*time.Minute, "how long the final drain may take")
	fs.DurationVar(&o.convergeTimeout, "converge-timeout", time.Minute, "how long replicas may take to converge")
	fs.BoolVar(&o.keep, "keep-queues", false, "keep the queues after a passing run")
	return cmd
}

// validate checks the flags; a bad one is a usage error.
func (o *verifyOpts) validate(cmd *cobra.Command) error {
	bad := func(format string, args ...any) error { return usageErrorf(cmd, format, args...) }
	if o.check != "" {
		for _, f := range verifyWorkloadFlags {
			if cmd.Flags().Changed(f) {
				return bad("--check reads a saved history: --%s does not apply", f)
			}
		}
		if o.history != "" {
			return bad("--check and --history exclude each other")
		}
		return nil
	}
	switch {
	case o.duration <= 0:
		return bad("--duration %v: want a positive duration", o.duration)
	case o.producers < 1:
		return bad("--producers %d: want at least 1", o.producers)
	case o.consumers < 1:
		return bad("--consumers %d: want at least 1", o.consumers)
	case o.rate < 0:
		return bad("--rate %v: want 0 (unlimited) or more", o.rate)
	case o.queues < 1 || o.queues > 100:
		return bad("--queues %d: want 1 to 100", o.queues)
	case o.partitions < 1:
		return bad("--partitions %d: want at least 1", o.partitions)
	case o.replicas < 1:
		return bad("--replicas %d: want at least 1", o.replicas)
	case o.requeueFraction < 0 || o.requeueFraction > 1:
		return bad("--requeue-fraction %v: want 0 to 1", o.requeueFraction)
	case o.expireFraction < 0 || o.expireFraction > 1:
		return bad("--expire-fraction %v: want 0 to 1", o.expireFraction)
	case o.drainTimeout <= 0 || o.convergeTimeout <= 0:
		return bad("--drain-timeout and --converge-timeout: want positive durations")
	}
	return nil
}

// verifyReport is what verify prints; -o json prints it as it is.
type verifyReport struct {
	// OK: the verdict passed, the drain finished and the replicas
	// converged.
	OK   bool   `json:"ok"`
	Seed uint64 `json:"seed,omitempty"`
	// Queues are the queues the run used.
	Queues  []string `json:"queues,omitempty"`
	History string   `json:"history,omitempty"`
	// Drain and Convergence are "ok", "skipped" (--check) or the error.
	Drain       string          `json:"drain"`
	Convergence string          `json:"convergence"`
	Verdict     *verify.Verdict `json:"verdict"`
}

// verifyFile judges a saved history.
func (a *app) verifyFile(o *verifyOpts) error {
	ops, err := verify.ReadFile(o.check)
	if err != nil {
		return err
	}
	r := &verifyReport{History: o.check, Drain: "skipped", Convergence: "skipped", Verdict: verify.Check(ops, verify.CheckOptions{})}
	r.OK = r.Verdict.OK()
	return a.verifyResult(r)
}

// verify runs the workload, drains, checks and prints the verdict.
func (a *app) verify(ctx context.Context, o *verifyOpts) error {
	c, err := a.goClient(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	w, err := verify.New(verify.Config{
		Client: c, NumQueues: o.queues, Partitions: o.partitions, Replicas: o.replicas,
		Producers: o.producers, Consumers: o.consumers, Rate: o.rate, Duration: o.duration,
		RequeueFraction: o.requeueFraction, ExpireFraction: o.expireFraction,
		Timeout: a.timeout, Seed: o.seed, Logger: slog.Default(),
	})
	if err != nil {
		return err
	}
	cfg := w.Config()
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	err = w.Setup(sctx)
	cancel()
	if err != nil {
		return err
	}
	if !a.jsonOut() {
		fmt.Fprintf(a.stdout, "verify: %s on %s (%d partitions of %d replicas): %s at %s, %s, requeue %g, expire %g, seed %d\n",
			o.duration, strings.Join(w.Queues(), ", "), o.partitions, o.replicas, plural(o.producers, "producer"), rateText(o.rate),
			plural(o.consumers, "consumer"), o.requeueFraction, o.expireFraction, cfg.Seed)
	}

	// The first Ctrl-C ends the run early; a second one kills the process.
	runCtx, stopSignals := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	prog := a.verifyProgress(w.History())
	err = w.Run(runCtx)
	stopSignals()
	if err != nil {
		prog.stop()
		return err
	}
	r := &verifyReport{Seed: cfg.Seed, Queues: w.Queues(), History: o.history, Drain: "ok", Convergence: "ok"}
	dctx, cancel := context.WithTimeout(ctx, o.drainTimeout)
	err = w.Drain(dctx)
	cancel()
	prog.stop()
	if err != nil {
		r.Drain = err.Error()
	}
	if o.history != "" {
		if err := w.History().WriteFile(o.history); err != nil {
			return err
		}
	}
	r.Verdict = verify.Check(w.History().Ops(), verify.CheckOptions{})
	vctx, cancel := context.WithTimeout(ctx, o.convergeTimeout)
	err = verify.CheckConvergence(vctx, c, nil, w.Queues())
	cancel()
	if err != nil {
		r.Convergence = err.Error()
	}
	r.OK = r.Verdict.OK() && r.Drain == "ok" && r.Convergence == "ok"
	if r.OK && !o.keep {
		for _, q := range w.Queues() {
			dctx, cancel := a.callCtx(ctx, 0)
			if err := c.DeleteQueue(dctx, q); err != nil {
				slog.Warn("verify: deleting queue", "queue", q, "err", err)
			}
			cancel()
		}
	}
	return a.verifyResult(r)
}

// verifyResult prints r and turns a failure into exit status 1.
func (a *app) verifyResult(r *verifyReport) error {
	if a.jsonOut() {
		data, err := json.Marshal(r)
		if err != nil {
			return err
		}
		if _, err := a.stdout.Write(append(data, '\n')); err != nil {
			return err
		}
	} else {
		if err := r.Verdict.WriteText(a.stdout); err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "drain: %s\nreplica convergence: %s\n", r.Drain, r.Convergence)
		if r.History != "" {
			fmt.Fprintf(a.stdout, "history: %s\n", r.History)
		}
	}
	if r.OK {
		return nil
	}
	var why []string
	if !r.Verdict.OK() {
		why = append(why, r.Verdict.Summary())
	}
	if r.Drain != "ok" && r.Drain != "skipped" {
		why = append(why, "the drain did not finish")
	}
	if r.Convergence != "ok" && r.Convergence != "skipped" {
		why = append(why, "the replicas did not converge")
	}
	return &exitError{code: 1, msg: "verify: " + strings.Join(why, "; ")}
}

func rateText(rate float64) string {
	if rate == 0 {
		return "full speed"
	}
	return fmt.Sprintf("%g msgs/s", rate)
}

// verifyProgress prints a line on stderr every 5 s until stop: how many
// operations went how.
func (a *app) verifyProgress(h *verify.History) *progress {
	p := &progress{done: make(chan struct{}), end: make(chan struct{})}
	start := time.Now()
	go func() {
		defer close(p.end)
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-p.done:
				return
			case now := <-t.C:
				unknown := h.Count(verify.KindEnqueue, verify.Unknown) + h.Count(verify.KindAck, verify.Unknown) +
					h.Count(verify.KindReceive, verify.Unknown)
				fmt.Fprintf(a.stderr, "verify %s: %d enqueued, %d delivered, %d drained, %d acked, %d unknown outcomes\n",
					now.Sub(start).Round(time.Second), h.Count(verify.KindEnqueue, verify.OK), h.Count(verify.KindDeliver, verify.OK),
					h.Count(verify.KindDrainDeliver, verify.OK), h.Count(verify.KindAck, verify.OK), unknown)
			}
		}
	}()
	return p
}
