// Command pod holds a network namespace for the processes of one "pod" in the tests (issue
// 15): queue-proxy and the function it fronts share it as a Kubernetes pod's containers
// share theirs, so each pod has its own loopback and queue-proxy's fixed ports (8012, 8013,
// 8022, 9090, 9091) never meet another pod's. testenv.NewPod starts it under
// `unshare --net`; the pod's processes join with `nsenter`.
//
// Its loopback is brought up, then it relays through Unix sockets in -dir, which cross
// network namespaces: for each -in port P, connections to <dir>/in-P.sock reach 127.0.0.1:P
// inside the pod (the test reaches queue-proxy so); for each -out port P, connections to
// 127.0.0.1:P inside reach <dir>/out-P.sock, which the test relays to 127.0.0.1:P outside
// (the pod reaches NATS, Ray, the LLM stand-in and other pods at their usual addresses).
// It prints "ready" once every relay listens, and runs until it is killed.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"github.com/fleet-ai/ray-executor/shared/testenv/podnet"
)

func main() {
	dir := flag.String("dir", "", "directory of the relay sockets")
	in := flag.String("in", "", "comma-separated ports inside the pod reached from <dir>/in-<port>.sock")
	out := flag.String("out", "", "comma-separated ports inside the pod relayed to <dir>/out-<port>.sock")
	flag.Parse()
	if err := loopbackUp(); err != nil {
		fail("bringing up lo: %v", err)
	}
	for _, p := range ports(*in) {
		ln, err := net.Listen("unix", filepath.Join(*dir, "in-"+p+".sock"))
		if err != nil {
			fail("%v", err)
		}
		go podnet.Relay(ln, "tcp", "127.0.0.1:"+p)
	}
	for _, p := range ports(*out) {
		ln, err := net.Listen("tcp", "127.0.0.1:"+p)
		if err != nil {
			fail("%v", err)
		}
		go podnet.Relay(ln, "unix", filepath.Join(*dir, "out-"+p+".sock"))
	}
	fmt.Println("ready")
	select {}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pod: "+format+"\n", args...)
	os.Exit(1)
}

func ports(list string) []string {
	var out []string
	for _, p := range strings.Split(list, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			fail("bad port %q", p)
		}
		out = append(out, p)
	}
	return out
}

// loopbackUp sets IFF_UP on lo (a new network namespace starts with it down).
func loopbackUp() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	var ifr [40]byte // struct ifreq: the name, then (here) the flags
	copy(ifr[:], "lo")
	ioctl := func(req uintptr) error {
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
			return e
		}
		return nil
	}
	if err := ioctl(syscall.SIOCGIFFLAGS); err != nil {
		return err
	}
	*(*uint16)(unsafe.Pointer(&ifr[syscall.IFNAMSIZ])) |= syscall.IFF_UP
	return ioctl(syscall.SIOCSIFFLAGS)
}
