package rexctl

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
)

// DefaultAddress is the ingress of `make run`.
const DefaultAddress = "127.0.0.1:50056"

// Environment variables read when the matching flag is not given.
const (
	EnvAddress   = "REX_ADDRESS"
	EnvToken     = "REX_TOKEN"
	EnvTokenFile = "REX_TOKEN_FILE"
	EnvCAFile    = "REX_CA_FILE"
	EnvCertFile  = "REX_CERT_FILE"
	EnvKeyFile   = "REX_KEY_FILE"
)

const (
	maxTokenBytes     = 4096
	maxTokenFileBytes = 64 << 10
	maxPEMFileBytes   = 1 << 20
	maxAddressBytes   = 1024
	// maxReceiveBytes is the largest reply taken: the ingress sends at most 64 MiB (a
	// status with every agent's proposal).
	maxReceiveBytes = 64 << 20
)

// connOptions are the flags every command shares to reach the ingress.
type connOptions struct {
	address            string
	token              string
	tokenFile          string
	tls                bool
	caFile             string
	serverName         string
	certFile           string
	keyFile            string
	insecureSkipVerify bool
	timeout            time.Duration
}

// secret is a bearer token: it formats as a placeholder, so no %v of it ever prints it.
type secret string

func (secret) String() string   { return "[redacted]" }
func (secret) GoString() string { return "[redacted]" }

// bearer sends the token as "authorization: Bearer <token>" on every call.
type bearer struct{ token secret }

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b.token)}, nil
}

func (bearer) String() string   { return "bearer([redacted])" }
func (bearer) GoString() string { return "bearer([redacted])" }

// RequireTransportSecurity is false: the ingress of `make run` and of Knative (behind its
// TLS-terminating ingress) speaks h2c. A token sent in the clear to another host is warned of.
func (bearer) RequireTransportSecurity() bool { return false }

// resolveToken picks the token: --token, else --token-file, else REX_TOKEN, else
// REX_TOKEN_FILE. Errors name where the token came from, never the token.
func (o *connOptions) resolveToken(getenv func(string) string) (secret, error) {
	if o.token != "" && o.tokenFile != "" {
		return "", usagef("give --token or --token-file, not both")
	}
	switch {
	case o.token != "":
		return checkToken(o.token, "--token")
	case o.tokenFile != "":
		return readToken(o.tokenFile, "--token-file")
	case getenv(EnvToken) != "":
		return checkToken(getenv(EnvToken), EnvToken)
	case getenv(EnvTokenFile) != "":
		return readToken(getenv(EnvTokenFile), EnvTokenFile)
	}
	return "", nil
}

func readToken(path, from string) (secret, error) {
	b, err := readBounded(path, maxTokenFileBytes, nil)
	if err != nil {
		return "", usagef("%s: %v", from, err)
	}
	return checkToken(string(b), from+" "+path)
}

// checkToken trims the token and refuses one that could not travel as gRPC metadata.
func checkToken(tok, from string) (secret, error) {
	tok = strings.TrimSpace(tok)
	if tok == "" {
		return "", usagef("%s: the token is empty", from)
	}
	if len(tok) > maxTokenBytes {
		return "", usagef("%s: the token is longer than %d bytes", from, maxTokenBytes)
	}
	for i := 0; i < len(tok); i++ {
		if c := tok[i]; c < 0x21 || c > 0x7e {
			return "", usagef("%s: the token has a character at byte %d that is not printable ASCII", from, i+1)
		}
	}
	return secret(tok), nil
}

// readBounded reads a file ("-": stdin) of at most limit bytes.
func readBounded(path string, limit int64, stdin io.Reader) ([]byte, error) {
	var r io.Reader
	if path == "-" {
		if stdin == nil {
			return nil, fmt.Errorf("standard input is not available here")
		}
		r = stdin
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", displayPath(path), limit)
	}
	return b, nil
}

func displayPath(path string) string {
	if path == "-" {
		return "standard input"
	}
	return path
}

// address is --address, else REX_ADDRESS, else DefaultAddress.
func (o *connOptions) resolveAddress(getenv func(string) string) (string, error) {
	addr := o.address
	if addr == "" {
		addr = getenv(EnvAddress)
	}
	if addr == "" {
		addr = DefaultAddress
	}
	if len(addr) > maxAddressBytes {
		return "", usagef("the address is longer than %d bytes", maxAddressBytes)
	}
	for _, c := range addr {
		if c <= ' ' || c == 0x7f {
			return "", usagef("the address %q has a space or control character", addr)
		}
	}
	return addr, nil
}

// transport builds the connection's credentials: TLS when --tls or any TLS option is given.
func (o *connOptions) transport(getenv func(string) string) (credentials.TransportCredentials, bool, error) {
	ca, cert, key := orEnv(o.caFile, getenv(EnvCAFile)), orEnv(o.certFile, getenv(EnvCertFile)), orEnv(o.keyFile, getenv(EnvKeyFile))
	useTLS := o.tls || ca != "" || cert != "" || key != "" || o.serverName != "" || o.insecureSkipVerify
	if !useTLS {
		return insecure.NewCredentials(), false, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.serverName, InsecureSkipVerify: o.insecureSkipVerify} //nolint:gosec // only on request
	if ca != "" {
		pem, err := readBounded(ca, maxPEMFileBytes, nil)
		if err != nil {
			return nil, true, usagef("--ca-file: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, true, usagef("--ca-file %s: no PEM certificate in it", ca)
		}
		cfg.RootCAs = pool
	}
	if (cert == "") != (key == "") {
		return nil, true, usagef("a client certificate needs both --cert-file and --key-file")
	}
	if cert != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, true, usagef("client certificate %s / key %s: %v", cert, key, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return credentials.NewTLS(cfg), true, nil
}

func orEnv(flag, env string) string {
	if flag != "" {
		return flag
	}
	return env
}

// dial opens a client of the ingress that presents tok, if any (lazily: the first call
// connects).
func (o *connOptions) dial(getenv func(string) string, stderr io.Writer, tok secret) (pb.RayExecutorServiceClient, func(), error) {
	addr, err := o.resolveAddress(getenv)
	if err != nil {
		return nil, nil, err
	}
	creds, secure, err := o.transport(getenv)
	if err != nil {
		return nil, nil, err
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithUserAgent("rexctl"),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxReceiveBytes)),
	}
	if tok != "" {
		if !secure && !loopback(addr) {
			fmt.Fprintf(stderr, "rexctl: warning: the bearer token goes to %s without TLS (use --tls)\n", addr)
		}
		opts = append(opts, grpc.WithPerRPCCredentials(bearer{token: tok}))
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, nil, usagef("address %q: %v", addr, err)
	}
	return pb.NewRayExecutorServiceClient(conn), func() { _ = conn.Close() }, nil
}

// loopback reports whether addr names this machine (no token leaves it in the clear).
func loopback(addr string) bool {
	addr = strings.TrimPrefix(strings.TrimPrefix(addr, "dns:///"), "passthrough:///")
	if strings.HasPrefix(addr, "unix:") {
		return true
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
