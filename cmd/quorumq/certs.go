package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/quorumq/quorumq/transport/pki"
)

// certsFlags are the flags every certs subcommand shares.
type certsFlags struct {
	out          string
	force        bool
	keepExisting bool
	days         int
}

func (f *certsFlags) register(fs *pflag.FlagSet, outHelp string, defDays int) {
	fs.StringVar(&f.out, "out", "", outHelp)
	fs.BoolVar(&f.force, "force", false, "replace files that exist")
	fs.BoolVar(&f.keepExisting, "keep-existing", false, "if the files exist, leave them and exit 0 (for one-shot jobs)")
	if defDays > 0 {
		fs.IntVar(&f.days, "days", defDays, fmt.Sprintf("lifetime in days (1 to %d)", maxCertDays))
	}
}

// maxCertDays bounds every lifetime: 20 years.
const maxCertDays = 20 * 365

// lifetime checks --days.
func (f *certsFlags) lifetime(cmd *cobra.Command) (time.Duration, error) {
	if f.days < 1 || f.days > maxCertDays {
		return 0, usageErrorf(cmd, "--days %d: want 1 to %d", f.days, maxCertDays)
	}
	return time.Duration(f.days) * 24 * time.Hour, nil
}

// write writes files (path -> content, mode) unless one exists: then it
// fails, or with --keep-existing does nothing (ok false), or with --force
// replaces them.
func (f *certsFlags) write(files []certFile) (bool, error) {
	if !f.force {
		var exist []string
		for _, cf := range files {
			if _, err := os.Stat(cf.path); err == nil {
				exist = append(exist, cf.path)
			}
		}
		if len(exist) > 0 {
			if f.keepExisting {
				return false, nil
			}
			return false, fmt.Errorf("%v already exist: --force replaces them, --keep-existing keeps them", exist)
		}
	}
	for _, cf := range files {
		if err := os.MkdirAll(filepath.Dir(cf.path), 0o755); err != nil {
			return false, err
		}
		if err := pki.WriteFile(cf.path, cf.data, cf.mode, f.force); err != nil {
			return false, err
		}
	}
	return true, nil
}

type certFile struct {
	path string
	data []byte
	mode os.FileMode
}

func (a *app) certsCmd() *cobra.Command {
	return group("certs", "Create the TLS material of a cluster: CA, node and client certificates, gossip keys",
		`  quorumq certs ca --out ./tls
  quorumq certs node --ca-dir ./tls --id n1 --host n1.example,10.0.0.5 --out ./tls
  quorumq certs client --ca-dir ./tls --name worker --out ./tls
  quorumq certs gossip-key --out ./tls/gossip.key`,
		a.certsCACmd(), a.certsNodeCmd(), a.certsClientCmd(), a.certsGossipKeyCmd())
}

func (a *app) certsCACmd() *cobra.Command {
	var f certsFlags
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Create a cluster CA: DIR/ca.pem and DIR/ca-key.pem",
		Long: `Create a self-signed ECDSA P-256 certificate authority for one cluster:
--out DIR/ca.pem (give it to every node, --tls-ca) and DIR/ca-key.pem (keep it
safe, mode 0600: it signs node and client certificates).`,
		Example: `  quorumq certs ca --out ./tls
  quorumq certs ca --out ./tls --days 1825`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.out == "" {
				return usageErrorf(cmd, "--out DIR is required")
			}
			life, err := f.lifetime(cmd)
			if err != nil {
				return err
			}
			ca, err := pki.NewCA("quorumq CA", life)
			if err != nil {
				return err
			}
			certPath, keyPath := filepath.Join(f.out, pki.CACertFile), filepath.Join(f.out, pki.CAKeyFile)
			wrote, err := f.write([]certFile{{certPath, ca.CertPEM, 0o644}, {keyPath, ca.KeyPEM, 0o600}})
			if err != nil || !wrote {
				if err == nil {
					fmt.Fprintf(a.stdout, "%s exists: kept\n", certPath)
				}
				return err
			}
			fmt.Fprintf(a.stdout, "wrote %s and %s; valid until %s\n", certPath, keyPath, ca.Cert.NotAfter.UTC().Format(time.DateOnly))
			return nil
		},
	}
	f.register(cmd.Flags(), "directory to write ca.pem and ca-key.pem to (required)", int(pki.DefaultCALifetime/(24*time.Hour)))
	return cmd
}

// loadCA reads the CA of --ca-dir.
func loadCA(cmd *cobra.Command, dir string) (*pki.CA, error) {
	if dir == "" {
		return nil, usageErrorf(cmd, "--ca-dir DIR is required (where 'quorumq certs ca' wrote ca.pem and ca-key.pem)")
	}
	return pki.LoadCA(dir)
}

func (a *app) certsNodeCmd() *cobra.Command {
	var (
		f     certsFlags
		caDir string
		id    string
		hosts []string
	)
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Create a node certificate: OUT/<id>.pem and OUT/<id>-key.pem",
		Long: `Create a certificate for node --id, signed by the CA in --ca-dir, good for
both ends of mutual TLS between nodes. It names the node id as a URI SAN
(spiffe://quorumq/node/<id>) and a DNS SAN (<id>.node.quorumq); peers check
that id, not host names. --host adds DNS names and IP addresses.`,
		Example: `  quorumq certs node --ca-dir ./tls --id n1 --host n1.example,10.0.0.5 --out ./tls`,
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if id == "" || f.out == "" {
				return usageErrorf(cmd, "--id and --out are required")
			}
			life, err := f.lifetime(cmd)
			if err != nil {
				return err
			}
			ca, err := loadCA(cmd, caDir)
			if err != nil {
				return err
			}
			iss, err := ca.IssueNode(id, hosts, life)
			if err != nil {
				return err
			}
			return a.writeIssued(&f, id, iss)
		},
	}
	cmd.Flags().StringVar(&caDir, "ca-dir", "", "directory holding ca.pem and ca-key.pem (required)")
	cmd.Flags().StringVar(&id, "id", "", "node id the certificate names (required; the server's --node-id)")
	cmd.Flags().StringSliceVar(&hosts, "host", nil, "DNS names or IP addresses to add, comma-separated")
	f.register(cmd.Flags(), "directory to write <id>.pem and <id>-key.pem to (required)", int(pki.DefaultCertLifetime/(24*time.Hour)))
	return cmd
}

func (a *app) certsClientCmd() *cobra.Command {
	var (
		f     certsFlags
		caDir string
		name  string
	)
	cmd := &cobra.Command{
		Use:   "client",
		Short: "Create a client certificate: OUT/<name>.pem and OUT/<name>-key.pem",
		Long: `Create a client certificate for --name, signed by the CA in --ca-dir. It names
the client as a URI SAN (spiffe://quorumq/client/<name>).`,
		Example: `  quorumq certs client --ca-dir ./tls --name worker --out ./tls`,
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" || f.out == "" {
				return usageErrorf(cmd, "--name and --out are required")
			}
			life, err := f.lifetime(cmd)
			if err != nil {
				return err
			}
			ca, err := loadCA(cmd, caDir)
			if err != nil {
				return err
			}
			iss, err := ca.IssueClient(name, life)
			if err != nil {
				return err
			}
			return a.writeIssued(&f, name, iss)
		},
	}
	cmd.Flags().StringVar(&caDir, "ca-dir", "", "directory holding ca.pem and ca-key.pem (required)")
	cmd.Flags().StringVar(&name, "name", "", "client name the certificate names (required)")
	f.register(cmd.Flags(), "directory to write <name>.pem and <name>-key.pem to (required)", int(pki.DefaultCertLifetime/(24*time.Hour)))
	return cmd
}

func (a *app) writeIssued(f *certsFlags, name string, iss *pki.Issued) error {
	certPath, keyPath := filepath.Join(f.out, name+".pem"), filepath.Join(f.out, name+"-key.pem")
	wrote, err := f.write([]certFile{{certPath, iss.CertPEM, 0o644}, {keyPath, iss.KeyPEM, 0o600}})
	if err != nil || !wrote {
		if err == nil {
			fmt.Fprintf(a.stdout, "%s exists: kept\n", certPath)
		}
		return err
	}
	fmt.Fprintf(a.stdout, "wrote %s and %s; valid until %s\n", certPath, keyPath, iss.NotAfter.UTC().Format(time.DateOnly))
	return nil
}

func (a *app) certsGossipKeyCmd() *cobra.Command {
	var f certsFlags
	cmd := &cobra.Command{
		Use:   "gossip-key",
		Short: "Create a gossip encryption key (base64 of 32 random bytes) in a file",
		Long: `Write a new random gossip key to --out (mode 0600): every node of a cluster
takes the same one (--gossip-key-file) at its first start. To change it on a
running cluster: quorumq cluster gossip-key install, use, remove.`,
		Example: `  quorumq certs gossip-key --out ./tls/gossip.key`,
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.out == "" {
				return usageErrorf(cmd, "--out FILE is required")
			}
			k, err := pki.NewGossipKey()
			if err != nil {
				return err
			}
			wrote, err := f.write([]certFile{{f.out, []byte(k + "\n"), 0o600}})
			if err != nil || !wrote {
				if err == nil {
					fmt.Fprintf(a.stdout, "%s exists: kept\n", f.out)
				}
				return err
			}
			fmt.Fprintf(a.stdout, "wrote %s\n", f.out)
			return nil
		},
	}
	f.register(cmd.Flags(), "file to write the key to (required)", 0)
	return cmd
}
