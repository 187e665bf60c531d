package testenv

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Process is one of the project's binaries running as a child of the test, for tests that
// must measure it from its own accounting (its memory, as the kernel reports it).
type Process struct {
	Cmd  *exec.Cmd
	Addr string // 127.0.0.1:<port> it listens on
	out  *bytes.Buffer
}

// StartBinary builds the main package pkg (a path relative to the test's directory), runs it
// with PORT set to a free port and env added to the test's environment, and waits until
// the port accepts connections. The process is killed when the test ends.
func StartBinary(t testing.TB, pkg string, env ...string) *Process {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "bin")
	if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	port := FreePort(t)
	p := &Process{Cmd: exec.Command(bin), Addr: fmt.Sprintf("127.0.0.1:%d", port), out: &bytes.Buffer{}}
	p.Cmd.Env = append(append(os.Environ(), "PORT="+strconv.Itoa(port), "LOG_LEVEL=warn"), env...)
	p.Cmd.Stdout, p.Cmd.Stderr = p.out, p.out
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Cmd.Process.Kill(); _, _ = p.Cmd.Process.Wait() })
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", p.Addr); err == nil {
			c.Close()
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not listen on %s within 20 s; output:\n%s", pkg, p.Addr, p.out.String())
		}
	}
}

// Memory is the process's resident memory now (VmRSS) and at its peak (VmHWM), in bytes.
func (p *Process) Memory(t testing.TB) (rss, peak int64) {
	t.Helper()
	return ProcMemory(t, p.Cmd.Process.Pid)
}

// ProcMemory is process pid's resident memory now (VmRSS) and at its peak (VmHWM), in
// bytes, from the kernel's accounting (/proc/<pid>/status).
func ProcMemory(t testing.TB, pid int) (rss, peak int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb << 10
		case "VmHWM:":
			peak = kb << 10
		}
	}
	if rss == 0 || peak == 0 {
		t.Fatalf("no VmRSS/VmHWM for pid %d", pid)
	}
	return rss, peak
}

// ProcCPU is the CPU time (user and system, all threads) process pid has used so far, from
// /proc/<pid>/stat.
func ProcCPU(t testing.TB, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The command name (field 2) is in parentheses and may hold spaces: count after it.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		t.Fatalf("/proc/%d/stat: %q", pid, b)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: %q", pid, b)
	}
	return time.Duration(utime+stime) * time.Second / clockTicks
}

// clockTicks is USER_HZ, the unit of utime and stime (100 on Linux).
const clockTicks = 100

// FreePort is a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
