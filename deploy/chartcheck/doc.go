// Package chartcheck checks the quorumq Helm chart (deploy/helm/quorumq)
// offline: it renders the chart with the Helm SDK for several sets of values,
// runs Helm's linter, decodes every rendered object strictly into the
// Kubernetes API types and checks what a quorumq cluster relies on (see
// invariants_test.go). It has only tests, and a module of its own so that
// the server's module does not depend on Helm.
//
//	cd deploy/chartcheck && go test ./...
package chartcheck
