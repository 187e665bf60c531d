// Package podnet relays connections between network namespaces through Unix sockets, for
// the tests' pods (testenv.NewPod, cmd/pod): a path-named Unix socket is reachable from every
// network namespace that shares the file system.
package podnet

import (
	"io"
	"net"
)

// Relay accepts on ln for ever and joins each connection to a new one to network/addr.
func Relay(ln net.Listener, network, addr string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return // the listener was closed
		}
		go func() {
			defer c.Close()
			d, err := net.Dial(network, addr)
			if err != nil {
				return // the caller sees the connection closed, as with nothing listening
			}
			defer d.Close()
			Join(c, d)
		}()
	}
}

// Join copies both ways until both directions end, passing half-closes on.
func Join(a, b net.Conn) {
	done := make(chan struct{}, 2)
	half := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			_ = dst.Close()
		}
		done <- struct{}{}
	}
	go half(a, b)
	go half(b, a)
	<-done
	<-done
}
