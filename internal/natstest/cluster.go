package natstest

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Cluster is a JetStream cluster of real nats-server nodes in this process, on random loopback
// ports with their stores in temporary directories. A node can be killed and restarted on the
// same ports and store, as an operator's restart would.
type Cluster struct {
	t     testing.TB
	mu    sync.Mutex
	nodes []*server.Server
	opts  []*server.Options
	log   *errorLog
}

// StartCluster starts an n-node JetStream cluster for the duration of t and waits until it has
// a meta leader.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t, nodes: make([]*server.Server, n), opts: make([]*server.Options, n), log: &errorLog{}}
	clusterPorts := freePorts(t, n)
	clientPorts := freePorts(t, n)
	routes := make([]*url.URL, n)
	for i := range n {
		routes[i] = &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", clusterPorts[i])}
	}
	for i := range n {
		c.opts[i] = &server.Options{
			ServerName: fmt.Sprintf("n%d", i),
			Host:       "127.0.0.1",
			Port:       clientPorts[i],
			JetStream:  true,
			StoreDir:   t.TempDir(),
			NoSigs:     true,
			NoLog:      false,
			Cluster:    server.ClusterOpts{Name: "custody-test", Host: "127.0.0.1", Port: clusterPorts[i]},
			Routes:     routes,
		}
	}
	for i := range n {
		c.startNode(i)
	}
	t.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, ns := range c.nodes {
			if ns != nil {
				Shutdown(ns)
			}
		}
	})
	CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if c.MetaLeader() < 0 {
			return fmt.Errorf("no JetStream meta leader")
		}
		return nil
	})
	return c
}

func (c *Cluster) startNode(i int) {
	c.t.Helper()
	o := *c.opts[i] // nats-server mutates its options
	ns, err := server.NewServer(&o)
	if err != nil {
		c.t.Fatalf("natstest: configure node %d: %v", i, err)
	}
	ns.SetLoggerV2(c.log, false, false, false)
	go ns.Start()
	if !ns.ReadyForConnections(20 * time.Second) {
		c.t.Fatalf("natstest: node %d not ready for connections", i)
	}
	c.mu.Lock()
	c.nodes[i] = ns
	c.mu.Unlock()
}

// URLs is the client URL of every node, comma separated, as --nats-url takes it.
func (c *Cluster) URLs() string {
	urls := make([]string, len(c.opts))
	for i, o := range c.opts {
		urls[i] = fmt.Sprintf("nats://127.0.0.1:%d", o.Port)
	}
	return strings.Join(urls, ",")
}

// Node returns node i, nil while it is down.
func (c *Cluster) Node(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// Kill shuts node i down.
func (c *Cluster) Kill(i int) {
	c.mu.Lock()
	ns := c.nodes[i]
	c.nodes[i] = nil
	c.mu.Unlock()
	if ns != nil {
		Shutdown(ns)
	}
}

// Restart starts node i again on its ports and store.
func (c *Cluster) Restart(i int) { c.startNode(i) }

// MetaLeader is the index of the JetStream meta leader, -1 when there is none.
func (c *Cluster) MetaLeader() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, ns := range c.nodes {
		if ns != nil && ns.JetStreamIsLeader() {
			return i
		}
	}
	return -1
}

// StreamLeader is the index of the node leading stream in the global account, -1 when none does.
func (c *Cluster) StreamLeader(stream string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, ns := range c.nodes {
		if ns != nil && ns.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream) {
			return i
		}
	}
	return -1
}

// StreamCurrent reports whether every running node's replica of stream is current.
func (c *Cluster) StreamCurrent(stream string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ns := range c.nodes {
		if ns == nil || !ns.JetStreamIsStreamCurrent(server.DEFAULT_GLOBAL_ACCOUNT, stream) {
			return false
		}
	}
	return true
}

// Errors returns the error lines the nodes logged that contain substr, such as
// "critical write error".
func (c *Cluster) Errors(substr string) []string { return c.log.matching(substr) }

func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	lns := make([]net.Listener, n)
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("natstest: free port: %v", err)
		}
		lns[i], ports[i] = ln, ln.Addr().(*net.TCPAddr).Port
	}
	for _, ln := range lns {
		ln.Close()
	}
	return ports
}

// errorLog keeps the warnings and errors the nodes log, so a test can assert on them.
type errorLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *errorLog) add(format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) < 10000 {
		l.lines = append(l.lines, fmt.Sprintf(format, v...))
	}
}

func (l *errorLog) matching(substr string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, s := range l.lines {
		if strings.Contains(s, substr) {
			out = append(out, s)
		}
	}
	return out
}

func (l *errorLog) Noticef(string, ...any)         {}
func (l *errorLog) Debugf(string, ...any)          {}
func (l *errorLog) Tracef(string, ...any)          {}
func (l *errorLog) Warnf(format string, v ...any)  { l.add(format, v...) }
func (l *errorLog) Errorf(format string, v ...any) { l.add(format, v...) }
func (l *errorLog) Fatalf(format string, v ...any) { l.add(format, v...) }
