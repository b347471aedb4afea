package cluster

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestHTTPDefaults: health and readiness open, metrics on the HTTP port,
// pprof nowhere, timeouts on.
func TestHTTPDefaults(t *testing.T) {
	c := startCluster(t, 3)
	base := "http://" + c.nodes[0].HTTPAddr()
	for path, want := range map[string]int{
		"/healthz": http.StatusOK, "/metrics": http.StatusOK,
		"/debug/pprof/": http.StatusNotFound, "/debug/pprof/profile?seconds=1": http.StatusNotFound,
	} {
		if code, _ := httpGet(t, base+path); code != want {
			t.Errorf("GET %s: %d, want %d", path, code, want)
		}
	}
	c.waitFor("ready", 30*time.Second, func() bool {
		code, _ := httpGet(t, base+"/readyz")
		return code == http.StatusOK
	})
	s := c.nodes[0].httpSrv
	if s.ReadHeaderTimeout == 0 || s.ReadTimeout == 0 || s.WriteTimeout == 0 || s.IdleTimeout == 0 {
		t.Fatalf("timeouts: header %v, read %v, write %v, idle %v", s.ReadHeaderTimeout, s.ReadTimeout, s.WriteTimeout, s.IdleTimeout)
	}
	if c.nodes[0].DebugAddr() != "" || c.nodes[0].MetricsAddr() != "" {
		t.Fatal("debug or metrics listener without their flags")
	}
}

// TestHTTPDebugAndMetricsAddr: pprof only on --debug-addr (loopback when
// no host is given), seconds= bounded; /metrics only on --metrics-addr.
func TestHTTPDebugAndMetricsAddr(t *testing.T) {
	c := startClusterWith(t, 3, func(cfg *Config) {
		if cfg.NodeID == "n1" {
			cfg.DebugAddr = ":0"
			cfg.MetricsAddr = "127.0.0.1:0"
		}
	})
	n := c.nodes[0]
	host, _, err := net.SplitHostPort(n.DebugAddr())
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("debug address %q: want loopback", n.DebugAddr())
	}
	debug, metrics, base := "http://"+n.DebugAddr(), "http://"+n.MetricsAddr(), "http://"+n.HTTPAddr()
	for _, tc := range []struct {
		url  string
		code int
		body string
	}{
		{debug + "/debug/pprof/", http.StatusOK, "goroutine"},
		{debug + "/debug/pprof/goroutine?debug=1", http.StatusOK, "goroutine profile"},
		{debug + "/debug/pprof/profile?seconds=61", http.StatusBadRequest, "0 to 60"},
		{debug + "/debug/pprof/trace?seconds=1e9", http.StatusBadRequest, "0 to 60"},
		{debug + "/debug/pprof/heap?seconds=x", http.StatusBadRequest, "0 to 60"},
		{debug + "/metrics", http.StatusNotFound, ""},
		{metrics + "/metrics", http.StatusOK, "quorumq_requests_in_flight"},
		{metrics + "/debug/pprof/", http.StatusNotFound, ""},
		{base + "/metrics", http.StatusNotFound, ""},
		{base + "/debug/pprof/", http.StatusNotFound, ""},
		{base + "/healthz", http.StatusOK, "ok"},
	} {
		code, body := httpGet(t, tc.url)
		if code != tc.code || !strings.Contains(body, tc.body) {
			t.Errorf("GET %s: %d %q, want %d with %q", tc.url, code, body, tc.code, tc.body)
		}
	}
}

func TestDebugAddrDefaultsToLoopback(t *testing.T) {
	for in, want := range map[string]string{"6060": "127.0.0.1:6060", ":6060": "127.0.0.1:6060", "0.0.0.0:6060": "0.0.0.0:6060", "[::1]:1": "[::1]:1"} {
		c := Config{DebugAddr: in}
		if err := c.validateHTTP(); err != nil || c.DebugAddr != want {
			t.Errorf("%q: %q %v, want %q", in, c.DebugAddr, err, want)
		}
	}
	c := Config{DebugAddr: "a:b:c"}
	if err := c.validateHTTP(); err == nil {
		t.Error("a:b:c accepted")
	}
}
