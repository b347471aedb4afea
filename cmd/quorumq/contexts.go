package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// A CLI context is a named set of connection settings (servers, CA, client
// certificate or token), as `nats context` keeps them: one JSON file per
// context in <config dir>/contexts, mode 0600 in a 0700 directory, and the
// selected one's name in <config dir>/current. The config dir is
// $QUORUMQ_CONFIG_DIR, else os.UserConfigDir()/quorumq.

// cliContext is one stored context. Paths are absolute.
type cliContext struct {
	Servers []string `json:"servers,omitempty"`
	CA      string   `json:"ca,omitempty"`
	Cert    string   `json:"cert,omitempty"`
	Key     string   `json:"key,omitempty"`
	Token   string   `json:"token,omitempty"`
}

// contextStore is the directory that holds the contexts.
type contextStore struct{ dir string }

// configDirEnv names the directory of the CLI's own files.
const configDirEnv = "QUORUMQ_CONFIG_DIR"

// openContextStore locates the store; getenv reads the environment.
func openContextStore(getenv func(string) string) (*contextStore, error) {
	if d := getenv(configDirEnv); d != "" {
		return &contextStore{dir: d}, nil
	}
	d, err := os.UserConfigDir()
	if err != nil {
		return nil, fmt.Errorf("no directory for contexts: %w (set %s)", err, configDirEnv)
	}
	return &contextStore{dir: filepath.Join(d, "quorumq")}, nil
}

func (s *contextStore) contextsDir() string { return filepath.Join(s.dir, "contexts") }

func (s *contextStore) path(name string) string {
	return filepath.Join(s.contextsDir(), name+".json")
}

func (s *contextStore) currentPath() string { return filepath.Join(s.dir, "current") }

// validContextName accepts names that are safe as file names: letters,
// digits, '.', '_' and '-', not starting with '.', at most 64 characters.
func validContextName(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("context name %q: want 1 to 64 characters", name)
	}
	if name[0] == '.' {
		return fmt.Errorf("context name %q: must not start with '.'", name)
	}
	for i := 0; i < len(name); i++ {
		switch b := name[i]; {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9', b == '.', b == '_', b == '-':
		default:
			return fmt.Errorf("context name %q: character %q not allowed (letters, digits, '.', '_', '-')", name, b)
		}
	}
	return nil
}

// errNoContext: the named context is not stored.
var errNoContext = errors.New("no such context")

// load reads context name.
func (s *contextStore) load(name string) (*cliContext, error) {
	if err := validContextName(name); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(s.path(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("context %q: %w (see 'quorumq context ls')", name, errNoContext)
	}
	if err != nil {
		return nil, fmt.Errorf("context %q: %w", name, err)
	}
	var c cliContext
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("context %q: %s: %w", name, s.path(name), err)
	}
	return &c, nil
}

// save writes context name (replacing it), mode 0600 in a 0700 directory.
func (s *contextStore) save(name string, c *cliContext) error {
	if err := validContextName(name); err != nil {
		return err
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	if err := s.mkdirs(); err != nil {
		return err
	}
	return writeFileAtomic(s.path(name), append(b, '\n'))
}

// mkdirs creates the config and contexts directories 0700, and tightens
// them to 0700 if they exist: a context may hold a token.
func (s *contextStore) mkdirs() error {
	for _, d := range []string{s.dir, s.contextsDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
		if err := os.Chmod(d, 0o700); err != nil {
			return err
		}
	}
	return nil
}

// writeFileAtomic writes data to path, mode 0600, through a temporary file
// renamed into place: a reader never sees half a context.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o600) // CreateTemp makes it 0600 already; say so
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

// remove deletes context name, and the selection if it was selected.
func (s *contextStore) remove(name string) error {
	if err := validContextName(name); err != nil {
		return err
	}
	if err := os.Remove(s.path(name)); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("context %q: %w (see 'quorumq context ls')", name, errNoContext)
	} else if err != nil {
		return err
	}
	if cur, err := s.current(); err == nil && cur == name {
		if err := os.Remove(s.currentPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// names lists the stored contexts, sorted.
func (s *contextStore) names() ([]string, error) {
	ents, err := os.ReadDir(s.contextsDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		n, ok := strings.CutSuffix(e.Name(), ".json")
		if ok && e.Type().IsRegular() && validContextName(n) == nil {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out, nil
}

// current is the name in the current file ("" if there is none).
func (s *contextStore) current() (string, error) {
	b, err := os.ReadFile(s.currentPath())
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// use selects context name, which must exist.
func (s *contextStore) use(name string) error {
	if _, err := s.load(name); err != nil {
		return err
	}
	if err := s.mkdirs(); err != nil {
		return err
	}
	return writeFileAtomic(s.currentPath(), []byte(name+"\n"))
}
