package main

import (
	"crypto/tls"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func (a *app) healthCmd() *cobra.Command {
	var addr, service string
	cmd := &cobra.Command{
		Use:   "health",
		Short: "Check a node's gRPC health; exit 0 if it is serving",
		Long: `Ask one node's client port for its gRPC health (grpc.health.v1) and exit 0 if
it is SERVING, else 1. Meant for container probes: the image has no shell.
Health needs no credential. A TLS port is checked over TLS: against the
cluster's CA when one is known (--ca, a context), else without checking the
server's certificate, so that a container probe needs no configuration.`,
		Example: `  quorumq health
  quorumq health --addr 127.0.0.1:7420 --timeout 2s

  # Kubernetes:
  #   livenessProbe:
  #     exec: {command: [quorumq, health]}`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := a.connSettings()
			if err != nil {
				return err
			}
			if addr == "" && len(s.servers) > 0 {
				addr = strings.TrimSpace(s.servers[0])
			}
			if addr == "" {
				return usageErrorf(cmd, "no address: set --addr or --servers")
			}
			opts, err := s.dialOptions()
			if err != nil {
				return err
			}
			if !s.tls && speaksTLS(cmd.Context(), addr) {
				// No CA to check the server with: a probe still gets its
				// answer over TLS. It sends nothing secret (no credential
				// goes without a CA) and learns only a health status.
				opts = []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
					MinVersion: tls.VersionTLS13, InsecureSkipVerify: true,
				}))}
			}
			cc, err := grpc.NewClient(addr, opts...)
			if err != nil {
				return err
			}
			defer cc.Close()
			ctx, cancel := a.callCtx(cmd.Context(), 0)
			defer cancel()
			resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
			if err != nil {
				return err
			}
			if a.jsonOut() {
				if err := writeJSON(a.stdout, resp); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(a.stdout, "%s: %s\n", addr, resp.GetStatus())
			}
			if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				return &exitError{code: 1, msg: fmt.Sprintf("%s is %s", addr, resp.GetStatus())}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "", "client address of the node to check (default: the first of --servers)")
	cmd.Flags().StringVar(&service, "service", "", "service name to check (default: the whole server)")
	return cmd
}
