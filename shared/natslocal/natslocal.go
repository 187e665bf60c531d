// Package natslocal runs the NATS server (with JetStream) in process on loopback, for
// `make run` (cmd/nats-local) and tests. It lives apart from shared/events so that the
// function binaries, which are only NATS clients, do not link the server.
package natslocal

import (
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// MaxPayload is the largest message the local server takes.
const MaxPayload = 8 << 20

// Server is an embedded NATS server with JetStream, for `make run` and tests: the same
// server binary production runs, in process, bound to loopback.
type Server struct {
	*server.Server
}

// Start starts a NATS server with JetStream storing under storeDir, on addr
// ("127.0.0.1:4222"; port 0 or -1 picks a free one).
func Start(addr, storeDir string) (*Server, error) {
	return StartConfig(addr, storeDir, "")
}

// StartConfig is Start with a NATS server configuration file applied first (its users and
// permissions, say: knative/nats/ray-executor-users.conf); the address, the store, JetStream
// and the payload limit are Start's.
func StartConfig(addr, storeDir, configFile string) (*Server, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("natslocal: NATS address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("natslocal: NATS port %q: %w", portStr, err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	opts := &server.Options{}
	if configFile != "" {
		if opts, err = server.ProcessConfigFile(configFile); err != nil {
			return nil, fmt.Errorf("natslocal: NATS configuration %s: %w", configFile, err)
		}
	}
	opts.Host, opts.Port, opts.JetStream, opts.StoreDir, opts.NoSigs = host, port, true, storeDir, true
	// A work message carries a whole request (execute takes up to MAX_BODY_BYTES, 2 MiB,
	// which is more as JSON), and a record all its agents' answers: NATS's default 1 MiB
	// is too small. 8 MiB is the largest NATS advises; production servers need the same
	// (max_payload: 8MB, knative/README.md).
	opts.MaxPayload = MaxPayload
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("natslocal: NATS: %w", err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("natslocal: NATS on %s did not start", addr)
	}
	return &Server{s}, nil
}

// URL is the nats:// address clients dial.
func (l *Server) URL() string { return l.ClientURL() }

// Stop shuts the server down and waits for it.
func (l *Server) Stop() {
	l.Shutdown()
	l.WaitForShutdown()
}
