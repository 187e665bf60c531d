package ingress

import (
	"log/slog"
	"net"
	"sync"
	"time"
)

// ConnLimits bound the connections a replica holds: a client that opens connections and
// sends nothing costs a file descriptor and a goroutine each until MAX_CONNECTION_IDLE, so
// their number is bounded too, per peer address and in all. A connection over either is
// closed as soon as it is accepted, before any byte of it is read.
type ConnLimits struct {
	// PerPeer (MAX_CONNECTIONS_PER_PEER) is how many connections one remote IP address may
	// hold open at once. Behind Knative every connection comes from queue-proxy on the
	// loopback address, which multiplexes callers over a few HTTP/2 connections; the bound
	// meets clients that reach the ingress directly.
	PerPeer int
	// Total (MAX_CONNECTIONS) is how many connections the replica holds open at once.
	Total int
}

// refusalLogEvery is how often a refusal is logged per peer: a flood of connections must
// not become a flood of log lines.
const refusalLogEvery = 10 * time.Second

// LimitConns wraps ln so that it never hands out a connection over limits. A zero limit
// is no limit.
func LimitConns(ln net.Listener, limits ConnLimits, logger *slog.Logger) net.Listener {
	return &limitedListener{Listener: ln, limits: limits, logger: logger, peers: map[string]int{},
		logged: map[string]time.Time{}, now: time.Now}
}

type limitedListener struct {
	net.Listener
	limits ConnLimits
	logger *slog.Logger
	now    func() time.Time

	mu     sync.Mutex
	total  int
	peers  map[string]int       // open connections by remote IP
	logged map[string]time.Time // last refusal logged, by remote IP
}

// Accept returns the next connection within the limits; those over them are closed here.
func (l *limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		peer := peerIP(c.RemoteAddr())
		if reason := l.admit(peer); reason != "" {
			_ = c.Close()
			l.logRefusal(peer, reason)
			continue
		}
		return &countedConn{Conn: c, release: func() { l.release(peer) }}, nil
	}
}

// admit counts a connection from peer, or says why it may not be held.
func (l *limitedListener) admit(peer string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.limits.Total > 0 && l.total >= l.limits.Total {
		return "the replica holds the most connections it takes (MAX_CONNECTIONS)"
	}
	if l.limits.PerPeer > 0 && l.peers[peer] >= l.limits.PerPeer {
		return "this address holds the most connections one peer may (MAX_CONNECTIONS_PER_PEER)"
	}
	l.total++
	l.peers[peer]++
	return ""
}

func (l *limitedListener) release(peer string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.peers[peer]--; l.peers[peer] <= 0 {
		delete(l.peers, peer)
	}
}

func (l *limitedListener) logRefusal(peer, reason string) {
	now := l.now()
	l.mu.Lock()
	last, seen := l.logged[peer]
	if !seen || now.Sub(last) >= refusalLogEvery {
		l.logged[peer] = now
	} else {
		peer = ""
	}
	for p, at := range l.logged { // forget quiet peers: the table stays as small as the flood
		if now.Sub(at) >= refusalLogEvery {
			delete(l.logged, p)
		}
	}
	l.mu.Unlock()
	if peer != "" {
		l.logger.Warn("connection refused", "peer", peer, "reason", reason)
	}
}

func peerIP(a net.Addr) string {
	if tcp, ok := a.(*net.TCPAddr); ok {
		return tcp.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

// countedConn releases its place once, on its first Close.
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}
