package turn

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Each relay socket asks for relaySocketBuffer of receive buffer (the
// kernel's default overflowed in one fast peer's bursts: 25 % loss at
// 200k pps); the kernel caps the request at net.core.rmem_max and reports
// twice what it grants.
func TestRelaySocketReceiveBuffer(t *testing.T) {
	raw, err := os.ReadFile("/proc/sys/net/core/rmem_max")
	if err != nil {
		t.Skipf("rmem_max not readable: %v", err)
	}
	rmemMax, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	want := 2 * min(relaySocketBuffer, rmemMax)

	s := startServer(t, testConfig())
	u, p := creds(peerA)
	if _, err := dialClient(t, s, "udp", u, p).Allocate(); err != nil {
		t.Fatal(err)
	}
	s.relays.mu.Lock()
	conns := make([]*relayConn, 0, len(s.relays.conns))
	for rc := range s.relays.conns {
		conns = append(conns, rc)
	}
	s.relays.mu.Unlock()
	if len(conns) != 1 {
		t.Fatalf("%d relay sockets, want 1", len(conns))
	}
	rc, err := conns[0].udp.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	var optErr error
	if err := rc.Control(func(fd uintptr) { got, optErr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF) }); err != nil {
		t.Fatal(err)
	}
	if optErr != nil {
		t.Fatal(optErr)
	}
	if got < want {
		t.Fatalf("relay socket SO_RCVBUF = %d, want at least %d (rmem_max %d)", got, want, rmemMax)
	}
}
