package main

import (
	"fmt"
	"log/slog"
)

// setupLogging makes the default slog logger a text handler on stderr at
// --log-level.
func (a *app) setupLogging() error {
	var level slog.Level
	switch a.logLevel {
	case "debug":
		level = slog.LevelDebug
	case "info":
		level = slog.LevelInfo
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	default:
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", a.logLevel)
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: level})))
	return nil
}
