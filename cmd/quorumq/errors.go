package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"unicode"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// usageError is a bad command line: exit status 2.
type usageError struct {
	cmd *cobra.Command
	err error
}

func (e *usageError) Error() string {
	if e.cmd == nil {
		return e.err.Error()
	}
	return fmt.Sprintf("%v (see '%s --help')", e.err, e.cmd.CommandPath())
}

func (e *usageError) Unwrap() error { return e.err }

func usageErrorf(cmd *cobra.Command, format string, args ...any) error {
	return &usageError{cmd: cmd, err: fmt.Errorf(format, args...)}
}

// exitError ends the run with status code; an empty msg prints nothing
// (the command has already said what went wrong).
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// report prints err as one line on stderr and returns the exit status.
func (a *app) report(err error) int {
	if err == nil {
		return 0
	}
	code := 1
	var ue *usageError
	var ee *exitError
	switch {
	case errors.As(err, &ue):
		code = 2
	case errors.As(err, &ee):
		code = ee.code
		if ee.msg == "" {
			return code
		}
	}
	fmt.Fprintf(a.stderr, "quorumq: %s\n", errorMessage(err))
	return code
}

// errorMessage renders err on one line; a gRPC status reads
// "<code in lower case>: <message>", as in `not found: queue "x" not found`.
func errorMessage(err error) string {
	var msg string
	var se interface {
		error
		GRPCStatus() *status.Status
	}
	if errors.As(err, &se) && se.GRPCStatus().Code() != codes.OK {
		st := se.GRPCStatus()
		// Keep what wraps the status ("ack: ..."), reword the status itself.
		msg = strings.Replace(err.Error(), se.Error(), codeName(st.Code())+": "+st.Message(), 1)
	} else if errors.Is(err, context.DeadlineExceeded) {
		msg = "deadline exceeded (see --timeout)"
	} else {
		msg = err.Error()
	}
	return strings.Join(strings.Fields(msg), " ")
}

// codeName spells a status code in lower-case words: NotFound -> "not found".
func codeName(c codes.Code) string {
	var b strings.Builder
	for i, r := range c.String() {
		if unicode.IsUpper(r) {
			if i > 0 {
				b.WriteByte(' ')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// noSubcommand is the Args of a command that takes no positional
// arguments but has (or may have) subcommands.
func noSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf("; did you mean %q?", s[0])
	}
	return &usageError{cmd: cmd, err: errors.New(msg)}
}

// exactArgs, minArgs and rangeArgs check the number of positional
// arguments; a wrong number is a usage error that shows the usage line.
func exactArgs(n int) cobra.PositionalArgs { return rangeArgs(n, n) }

func minArgs(n int) cobra.PositionalArgs { return rangeArgs(n, -1) }

// rangeArgs accepts lo to hi arguments; hi < 0 means no upper bound.
func rangeArgs(lo, hi int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) >= lo && (hi < 0 || len(args) <= hi) {
			return nil
		}
		return usageErrorf(cmd, "wrong number of arguments (%d); usage: %s", len(args), cmd.UseLine())
	}
}
