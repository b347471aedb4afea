package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/transport/pki"
)

// connSettings are the resolved connection settings of a run: --servers,
// --ca, --cert, --key and --token, each from the command line, else
// QUORUMQ_<NAME>, else the selected context, else its default; the
// credential (cert, key, token) comes whole from one place.
type connSettings struct {
	servers              []string
	ca, cert, key, token string
	context              string // the context they were completed from; "" none
	tls                  bool
}

// source says where the settings came from, for error messages.
func (s *connSettings) source() string {
	if s.context == "" {
		return "flags and environment"
	}
	return fmt.Sprintf("context %q", s.context)
}

// selectedContext is the name of the context to use and what selected it:
// --context (--context ” selects none), else QUORUMQ_CONTEXT, else the
// current file; "" when none is.
func (a *app) selectedContext(store *contextStore) (name, by string, err error) {
	switch {
	case a.cmdline["context"]:
		return a.contextName, "--context", nil
	case a.explicit["context"] && a.contextName != "":
		return a.contextName, envName("context"), nil
	}
	cur, err := store.current()
	if err != nil {
		return "", "", fmt.Errorf("reading the selected context: %w", err)
	}
	return cur, store.currentPath(), nil
}

// connSettings resolves the run's connection settings, once, in the order
// the connSettings type states.
func (a *app) connSettings() (*connSettings, error) {
	if a.settings != nil {
		return a.settings, nil
	}
	s := &connSettings{servers: a.servers, ca: a.ca, cert: a.cert, key: a.key, token: a.token}
	store, err := openContextStore(a.getenv)
	if err != nil {
		return nil, err
	}
	name, by, err := a.selectedContext(store)
	if err != nil {
		return nil, err
	}
	if name != "" {
		c, err := store.load(name)
		if err != nil {
			return nil, fmt.Errorf("%w, selected by %s", err, by)
		}
		s.context = name
		if !a.explicit["ca"] && c.CA != "" {
			s.ca = c.CA
		}
		// The credential is one unit: a certificate, key or token given by
		// flag or environment replaces the context's whole credential (else
		// a context's token would win over the certificate given, since
		// servers take a token first).
		if !a.explicit["cert"] && !a.explicit["key"] && !a.explicit["token"] {
			s.cert, s.key, s.token = c.Cert, c.Key, c.Token
		}
		if !a.explicit["servers"] && len(c.Servers) > 0 {
			s.servers = c.Servers
		}
	}
	if err := checkCredentials(s.ca, s.cert, s.key, s.token); err != nil {
		return nil, fmt.Errorf("%w (settings from %s)", err, s.source())
	}
	s.tls = s.ca != ""
	a.settings = s
	return s, nil
}

// checkCredentials refuses combinations that cannot work: a certificate
// without its key, and credentials without a CA (they are only ever used
// over TLS, which needs the cluster's CA).
func checkCredentials(ca, cert, key, token string) error {
	switch {
	case (cert == "") != (key == ""):
		return errors.New("--cert and --key go together: give both or neither")
	case ca == "" && (cert != "" || token != ""):
		return errors.New("a client certificate or token is only used over TLS: give the cluster's CA too (--ca)")
	}
	return nil
}

// dialOptions are the transport options of every connection of the run:
// TLS when a CA is known (with the client certificate and the token, if
// any), plaintext otherwise.
func (s *connSettings) dialOptions() ([]grpc.DialOption, error) {
	if !s.tls {
		return []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, nil
	}
	cfg, err := pki.ClientTLSConfig(s.ca, s.cert, s.key)
	if err != nil {
		return nil, err
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}
	if s.token != "" {
		tc, err := client.TokenCredentials(s.token)
		if err != nil {
			return nil, fmt.Errorf("--token: %w", err)
		}
		opts = append(opts, grpc.WithPerRPCCredentials(tc))
	}
	return opts, nil
}

// clientOptions are the Go client's options for the same settings.
func (s *connSettings) clientOptions() ([]client.Option, error) {
	if !s.tls {
		return nil, nil
	}
	cfg, err := pki.ClientTLSConfig(s.ca, s.cert, s.key)
	if err != nil {
		return nil, err
	}
	opts := []client.Option{client.WithTLS(cfg)}
	if s.token != "" {
		opts = append(opts, client.WithToken(s.token))
	}
	return opts, nil
}

// probeTimeout bounds the TLS probe of one server in explain.
const probeTimeout = 2 * time.Second

// explain adds to a failed call's error what to do when the failure is
// about TLS or credentials: plaintext to a TLS port, TLS to a plaintext
// one, or no identity.
func (a *app) explain(ctx context.Context, err error) error {
	s := a.settings
	if s == nil || err == nil {
		return err
	}
	msg := err.Error()
	switch code := status.Code(err); {
	case code == codes.Unauthenticated && s.cert == "" && s.token == "":
		return fmt.Errorf("%w; no credential was given (settings from %s): pass --cert and --key or --token, or select a context that has them (quorumq context ls)", err, s.source())
	case code == codes.Unauthenticated:
		return fmt.Errorf("%w (the credential came from %s)", err, s.source())
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		return fmt.Errorf("%w; the server does not speak TLS (started with --insecure?) but a CA is set (settings from %s): drop --ca, --cert, --key and --token (--context '' ignores the selected context) or select another context (quorumq context use NAME)", err, s.source())
	case !s.tls && (code == codes.Unavailable || errors.Is(err, client.ErrUnavailable)):
		for _, addr := range s.servers {
			if speaksTLS(ctx, strings.TrimSpace(addr)) {
				return fmt.Errorf("%w; the server %s speaks TLS: pass --ca (with --cert and --key, or --token) or select a context: quorumq context use NAME (quorumq context ls lists them)", err, addr)
			}
		}
	}
	return err
}

// speaksTLS reports whether addr (host:port) answers a TLS handshake. It
// only looks: nothing is verified and nothing is sent after the handshake.
func speaksTLS(ctx context.Context, addr string) bool {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}}}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err == nil {
		_ = c.Close()
		return true
	}
	// A TLS server that turned the handshake down answered with an alert.
	return strings.Contains(err.Error(), "remote error: tls:")
}

// absPath makes a path given on the command line absolute, for storing.
func absPath(p string) (string, error) {
	if p == "" {
		return "", nil
	}
	return filepath.Abs(p)
}
