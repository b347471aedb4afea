package main

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// Configuration comes from, in order of precedence: the command line, the
// environment variable QUORUMQ_<NAME> (QUORUMQ_DATA_DIR for --data-dir), a
// YAML file whose keys are the flag names (data-dir: /var/lib/quorumq), and
// the flag's default. Every source is parsed by the flag itself, so a value
// means the same wherever it is written.

// envName is the environment variable for flag name.
func envName(name string) string {
	return "QUORUMQ_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// configFile is a parsed YAML configuration: flag name -> value as it
// would be written on the command line (a YAML list is joined by commas).
type configFile struct {
	path   string
	values map[string]string
	lines  map[string]int
}

// readConfigFile reads the YAML file at path. Its top level must be a
// mapping whose keys are all in known; an unknown key is an error that names
// it, so a typo never passes silently.
func readConfigFile(path string, known []string) (*configFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	return parseConfigFile(path, data, known)
}

func parseConfigFile(path string, data []byte, known []string) (*configFile, error) {
	cf := &configFile{path: path, values: map[string]string{}, lines: map[string]int{}}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	if len(doc.Content) == 0 {
		return cf, nil // empty file
	}
	top := doc.Content[0]
	if top.Kind == yaml.ScalarNode && top.Tag == "!!null" {
		return cf, nil
	}
	if top.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("config file %s: line %d: want a mapping of flag names to values", path, top.Line)
	}
	for i := 0; i+1 < len(top.Content); i += 2 {
		k, v := top.Content[i], resolveAlias(top.Content[i+1])
		key := k.Value
		if k.Kind != yaml.ScalarNode || !slices.Contains(known, key) {
			return nil, fmt.Errorf("config file %s: line %d: unknown key %q (known: %s)", path, k.Line, key, strings.Join(known, ", "))
		}
		if line, dup := cf.lines[key]; dup {
			return nil, fmt.Errorf("config file %s: line %d: key %q already set on line %d", path, k.Line, key, line)
		}
		val, err := scalarOrList(v)
		if err != nil {
			return nil, fmt.Errorf("config file %s: line %d: %s: %w", path, v.Line, key, err)
		}
		cf.values[key], cf.lines[key] = val, k.Line
	}
	return cf, nil
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// scalarOrList renders a scalar as itself, null as "", and a list of
// scalars as its items joined by commas.
func scalarOrList(n *yaml.Node) (string, error) {
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "", nil
		}
		return n.Value, nil
	case yaml.SequenceNode:
		items := make([]string, 0, len(n.Content))
		for _, c := range n.Content {
			c = resolveAlias(c)
			if c.Kind != yaml.ScalarNode {
				return "", fmt.Errorf("want a list of plain values")
			}
			items = append(items, c.Value)
		}
		return strings.Join(items, ","), nil
	}
	return "", fmt.Errorf("want a value or a list of values")
}

// applyConfig sets each flag in names that the command line left alone:
// from its environment variable if that is set and not empty, else from
// file (which may be nil). Flags set either way count as changed.
func applyConfig(fs *pflag.FlagSet, names []string, getenv func(string) string, file *configFile) error {
	for _, name := range names {
		f := fs.Lookup(name)
		if f == nil {
			panic(fmt.Sprintf("applyConfig: no flag %q", name))
		}
		if f.Changed {
			continue
		}
		if v := getenv(envName(name)); v != "" {
			if err := fs.Set(name, v); err != nil {
				return fmt.Errorf("%s=%q: %w", envName(name), v, err)
			}
			continue
		}
		if file == nil {
			continue
		}
		if v, ok := file.values[name]; ok {
			if err := fs.Set(name, v); err != nil {
				return fmt.Errorf("config file %s: line %d: %s: %w", file.path, file.lines[name], name, err)
			}
		}
	}
	return nil
}
