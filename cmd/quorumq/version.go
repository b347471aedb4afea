package main

import (
	"encoding/json"
	"fmt"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/quorumq/quorumq/cluster"
)

func (a *app) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of this binary",
		Example: `  quorumq version
  quorumq cluster status   # the version a server runs`,
		Args: exactArgs(0),
		RunE: func(*cobra.Command, []string) error {
			if a.jsonOut() {
				return json.NewEncoder(a.stdout).Encode(map[string]string{
					"version": cluster.Version, "go": runtime.Version(), "platform": runtime.GOOS + "/" + runtime.GOARCH,
				})
			}
			_, err := fmt.Fprintf(a.stdout, "quorumq %s %s %s/%s\n", cluster.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return err
		},
	}
}
