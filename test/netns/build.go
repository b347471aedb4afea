package netns

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// BuildQuorumq builds the module's quorumq binary into dir and returns its
// path, for tests that run real servers.
func BuildQuorumq(dir string) (string, error) {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	bin := filepath.Join(dir, "quorumq")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/quorumq")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, out)
	}
	return bin, nil
}
