package cluster

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/memberlist"

	"github.com/quorumq/quorumq/transport/pki"
)

// keyringFile keeps a node's gossip keyring in its data directory, so that
// keys installed, used and removed at run time (quorumq cluster gossip-key)
// outlive a restart. It is written from --gossip-key-file at first start;
// afterwards it wins over that file, as Consul's local.keyring does.
const keyringFile = "gossip.keyring"

// keyringState is the file's content: the keys, base64, primary first.
type keyringState struct {
	Keys []string `json:"keys"`
}

// loadKeyring returns the node's gossip keyring: from the data directory
// if it has one, else from keyFile (and it is saved).
func loadKeyring(dataDir, keyFile string) (*memberlist.Keyring, bool, error) {
	path := filepath.Join(dataDir, keyringFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		var st keyringState
		if err := json.Unmarshal(b, &st); err != nil || len(st.Keys) == 0 {
			return nil, false, fmt.Errorf("gossip keyring %s is damaged: %v", path, err)
		}
		var keys [][]byte
		for _, k := range st.Keys {
			kb, err := pki.DecodeGossipKey(k)
			if err != nil {
				return nil, false, fmt.Errorf("gossip keyring %s: %w", path, err)
			}
			keys = append(keys, kb)
		}
		kr, err := memberlist.NewKeyring(keys, keys[0])
		return kr, true, err
	case !errors.Is(err, os.ErrNotExist):
		return nil, false, err
	}
	key, err := pki.ReadGossipKey(keyFile)
	if err != nil {
		return nil, false, err
	}
	kr, err := memberlist.NewKeyring(nil, key)
	if err != nil {
		return nil, false, err
	}
	return kr, false, saveKeyring(dataDir, kr)
}

// saveKeyring writes kr to the data directory (atomically, 0600).
func saveKeyring(dataDir string, kr *memberlist.Keyring) error {
	b, err := json.Marshal(keyringState{Keys: keyringKeys(kr)})
	if err != nil {
		return err
	}
	path := filepath.Join(dataDir, keyringFile)
	tmp := path + ".tmp"
	if err := pki.WriteFile(tmp, b, 0o600, true); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// keyringKeys lists kr's keys, base64, primary first.
func keyringKeys(kr *memberlist.Keyring) []string {
	var out []string
	for _, k := range kr.GetKeys() { // memberlist returns the primary first
		out = append(out, base64.StdEncoding.EncodeToString(k))
	}
	return out
}

// changeKeyring applies one keyring operation and saves the result.
func (n *Node) changeKeyring(op, key string) ([]string, error) {
	kr := n.keyring
	if kr == nil {
		return nil, errors.New("gossip is not encrypted on this node (--insecure)")
	}
	n.keyringMu.Lock()
	defer n.keyringMu.Unlock()
	if op != "list" {
		k, err := pki.DecodeGossipKey(key)
		if err != nil {
			return nil, err
		}
		switch op {
		case "install":
			err = kr.AddKey(k)
		case "use":
			err = kr.UseKey(k)
		case "remove":
			err = kr.RemoveKey(k)
		default:
			return nil, fmt.Errorf("unknown keyring operation %q", op)
		}
		if err != nil {
			return nil, err
		}
		if err := saveKeyring(n.cfg.DataDir, kr); err != nil {
			return nil, fmt.Errorf("save the keyring: %w", err)
		}
		n.log.Info("gossip keyring changed", "op", op)
	}
	return keyringKeys(kr), nil
}
