package transport

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// NewHCLogger returns an hclog.Logger, the logger hashicorp/raft wants, that
// writes to log. name (may be empty) becomes the "logger" attribute.
//
// Levels: raft logs every election, every new peer and every snapshot at
// INFO, and its DEBUG lines are chattier still; with hundreds of groups per
// node that would drown everything else, so hclog Info and Debug become
// slog.LevelDebug and Trace becomes slog.LevelDebug-4. Warn and Error keep
// their level. SetLevel is a no-op: the slog handler decides.
func NewHCLogger(log *slog.Logger, name string) hclog.Logger {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &hclogAdapter{log: log, name: name}
}

type hclogAdapter struct {
	log     *slog.Logger // with the implied args, without the name
	name    string
	implied []any
}

var _ hclog.Logger = (*hclogAdapter)(nil)

// slogLevel maps an hclog level; ok is false for Off.
func slogLevel(l hclog.Level) (slog.Level, bool) {
	switch l {
	case hclog.Trace:
		return slog.LevelDebug - 4, true
	case hclog.Warn:
		return slog.LevelWarn, true
	case hclog.Error:
		return slog.LevelError, true
	case hclog.Off:
		return 0, false
	default: // NoLevel, Debug, Info
		return slog.LevelDebug, true
	}
}

func (a *hclogAdapter) enabled(l hclog.Level) bool {
	sl, ok := slogLevel(l)
	return ok && a.log.Enabled(context.Background(), sl)
}

func (a *hclogAdapter) Log(level hclog.Level, msg string, args ...any) {
	sl, ok := slogLevel(level)
	if !ok {
		return
	}
	ctx := context.Background()
	if !a.log.Enabled(ctx, sl) {
		return
	}
	if sl == slog.LevelWarn && routineWarnings[msg] {
		// Raft warns about what every election and every new follower
		// goes through; they are news, not trouble.
		sl = slog.LevelInfo
		if !a.log.Enabled(ctx, sl) {
			return
		}
	}
	if sl >= slog.LevelWarn && closedConnErr(args) {
		// raft-net reports every connection closed under it, which is what
		// shutting a group or node down does.
		sl = slog.LevelDebug
		if !a.log.Enabled(ctx, sl) {
			return
		}
	}
	if a.name != "" {
		args = append([]any{"logger", a.name}, args...)
	}
	a.log.Log(ctx, sl, msg, args...)
}

func (a *hclogAdapter) Trace(msg string, args ...any) { a.Log(hclog.Trace, msg, args...) }
func (a *hclogAdapter) Debug(msg string, args ...any) { a.Log(hclog.Debug, msg, args...) }
func (a *hclogAdapter) Info(msg string, args ...any)  { a.Log(hclog.Info, msg, args...) }
func (a *hclogAdapter) Warn(msg string, args ...any)  { a.Log(hclog.Warn, msg, args...) }
func (a *hclogAdapter) Error(msg string, args ...any) { a.Log(hclog.Error, msg, args...) }

func (a *hclogAdapter) IsTrace() bool { return a.enabled(hclog.Trace) }
func (a *hclogAdapter) IsDebug() bool { return a.enabled(hclog.Debug) }
func (a *hclogAdapter) IsInfo() bool  { return a.enabled(hclog.Info) }
func (a *hclogAdapter) IsWarn() bool  { return a.enabled(hclog.Warn) }
func (a *hclogAdapter) IsError() bool { return a.enabled(hclog.Error) }

func (a *hclogAdapter) ImpliedArgs() []any { return a.implied }

func (a *hclogAdapter) With(args ...any) hclog.Logger {
	return &hclogAdapter{
		log:     a.log.With(args...),
		name:    a.name,
		implied: append(a.implied[:len(a.implied):len(a.implied)], args...),
	}
}

func (a *hclogAdapter) Name() string { return a.name }

func (a *hclogAdapter) Named(name string) hclog.Logger {
	if a.name != "" {
		name = a.name + "." + name
	}
	return a.ResetNamed(name)
}

func (a *hclogAdapter) ResetNamed(name string) hclog.Logger {
	return &hclogAdapter{log: a.log, name: name, implied: a.implied}
}

func (a *hclogAdapter) SetLevel(hclog.Level) {}

// GetLevel reports the lowest hclog level the slog handler lets through.
func (a *hclogAdapter) GetLevel() hclog.Level {
	for _, l := range []hclog.Level{hclog.Trace, hclog.Debug, hclog.Warn, hclog.Error} {
		if a.enabled(l) {
			return l
		}
	}
	return hclog.Off
}

func (a *hclogAdapter) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(a.StandardWriter(opts), "", 0)
}

func (a *hclogAdapter) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	if opts == nil {
		opts = &hclog.StandardLoggerOptions{}
	}
	return &stdWriter{a: a, force: opts.ForceLevel, infer: opts.InferLevels}
}

// stdWriter turns the lines of a standard library logger into records.
type stdWriter struct {
	a     *hclogAdapter
	force hclog.Level
	infer bool
}

var levelPrefixes = []struct {
	prefix string
	level  hclog.Level
}{
	{"[TRACE]", hclog.Trace}, {"[DEBUG]", hclog.Debug}, {"[INFO]", hclog.Info},
	{"[WARN]", hclog.Warn}, {"[ERROR]", hclog.Error}, {"[ERR]", hclog.Error},
}

func (w *stdWriter) Write(p []byte) (int, error) {
	msg := string(bytes.TrimRight(p, " \t\n"))
	level := hclog.Info
	for _, lp := range levelPrefixes {
		if rest, ok := strings.CutPrefix(msg, lp.prefix); ok {
			msg = strings.TrimSpace(rest)
			if w.infer {
				level = lp.level
			}
			break
		}
	}
	if w.force != hclog.NoLevel {
		level = w.force
	}
	w.a.Log(level, msg)
	return len(p), nil
}

// closedConnErr reports whether a log record's arguments carry the error of
// a use of a closed connection.
func closedConnErr(args []any) bool {
	for _, a := range args {
		if err, ok := a.(error); ok && errors.Is(err, net.ErrClosed) {
			return true
		}
	}
	return false
}

// routineWarnings are raft warnings that describe normal operation: a
// follower starting an election, a new follower being caught up.
var routineWarnings = map[string]bool{
	"heartbeat timeout reached, starting election":  true,
	"no known peers, aborting election":             true,
	"failed to get previous log":                    true,
	"appendEntries rejected, sending older logs":    true,
	"Election timeout reached, restarting election": true,
}
