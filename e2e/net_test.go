//go:build e2e

package e2e

import "net"

type net0 struct{}

// port returns a free loopback port.
func (net0) port() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func dialTCP(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }
