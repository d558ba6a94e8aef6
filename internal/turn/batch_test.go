package turn

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

func udpPair(t *testing.T) (*net.UDPConn, *net.UDPConn) {
	t.Helper()
	var cs [2]*net.UDPConn
	for i := range cs {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		cs[i] = c
	}
	return cs[0], cs[1]
}

// Datagrams queued before the read come out in order, with their sender,
// across batch boundaries; a kept one is returned, the rest are visited.
func TestBatchReaderOrderAndKeep(t *testing.T) {
	rx, tx := udpPair(t)
	const n = 50
	for i := 0; i < n; i++ {
		if _, err := tx.WriteToUDPAddrPort([]byte(fmt.Sprintf("m%02d", i)), rx.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
			t.Fatal(err)
		}
	}
	r, err := newBatchReader(rx, 8, 64, 4)
	if err != nil {
		t.Fatal(err)
	}
	want := tx.LocalAddr().(*net.UDPAddr).AddrPort()
	var seen []string
	visit := func(data, framed []byte, from netip.AddrPort) bool {
		if from != want {
			t.Errorf("datagram %q from %v, want %v", data, from, want)
		}
		if len(framed) != len(data)+4 || string(framed[4:]) != string(data) {
			t.Errorf("framed %q does not end in %q", framed, data)
		}
		seen = append(seen, string(data))
		return len(seen)%7 == 0
	}
	var kept []string
	_ = rx.SetReadDeadline(time.Now().Add(5 * time.Second))
	for len(seen) < n-n%7 {
		data, _, _, err := r.read(visit, func() {})
		if err != nil {
			t.Fatalf("after %d datagrams: %v", len(seen), err)
		}
		kept = append(kept, string(data))
	}
	for i, s := range seen {
		if s != fmt.Sprintf("m%02d", i) {
			t.Fatalf("datagram %d is %q", i, s)
		}
	}
	if len(kept) != n/7 || kept[0] != "m06" || kept[len(kept)-1] != "m48" {
		t.Fatalf("kept %v", kept)
	}
}

// A datagram that arrives while the reader waits is never missed: each one
// is sent only after the previous was visited, so every wait starts from a
// drained socket.
func TestBatchReaderWakesForEachDatagram(t *testing.T) {
	rx, tx := udpPair(t)
	r, err := newBatchReader(rx, 8, 64, 0)
	if err != nil {
		t.Fatal(err)
	}
	to := rx.LocalAddr().(*net.UDPAddr).AddrPort()
	const n = 200
	visited := make(chan string, n)
	waits := 0
	go func() {
		for i := 0; i < n; i++ {
			_, _ = tx.WriteToUDPAddrPort([]byte(fmt.Sprint(i)), to)
			select {
			case <-visited:
			case <-time.After(5 * time.Second):
				return // the reader's deadline fails the test
			}
		}
		_, _ = tx.WriteToUDPAddrPort([]byte("stop"), to)
	}()
	_ = rx.SetReadDeadline(time.Now().Add(20 * time.Second))
	count := 0
	data, _, _, err := r.read(func(data, _ []byte, _ netip.AddrPort) bool {
		if string(data) == "stop" {
			return true
		}
		if string(data) != fmt.Sprint(count) {
			t.Errorf("datagram %d is %q", count, data)
		}
		count++
		visited <- string(data)
		return false
	}, func() { waits++ })
	if err != nil || string(data) != "stop" {
		t.Fatalf("read ended with %q, %v after %d datagrams", data, err, count)
	}
	if count != n || waits < n/2 {
		t.Fatalf("visited %d of %d datagrams, waited %d times", count, n, waits)
	}
}

// A closed socket ends the read with an error.
func TestBatchReaderClosed(t *testing.T) {
	rx, _ := udpPair(t)
	r, err := newBatchReader(rx, 8, 64, 0)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		_ = rx.Close()
	}()
	if _, _, _, err := r.read(func([]byte, []byte, netip.AddrPort) bool { return true }, func() {}); err == nil {
		t.Fatal("read on a closed socket succeeded")
	}
}

// What visit queues from the reader's buffers goes out intact: the reader
// releases (sends) it before a later batch overwrites those buffers, also
// when more datagrams wait than one batch holds.
func TestBatchReaderReleasesBeforeReuse(t *testing.T) {
	rx, tx := udpPair(t)
	sink, _ := udpPair(t)
	out, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	const n = 50
	to := rx.LocalAddr().(*net.UDPAddr).AddrPort()
	for i := 0; i < n; i++ {
		if _, err := tx.WriteToUDPAddrPort([]byte(fmt.Sprintf("payload-%02d", i)), to); err != nil {
			t.Fatal(err)
		}
	}
	_, _ = tx.WriteToUDPAddrPort([]byte("stop"), to)
	r, err := newBatchReader(rx, 8, 64, 0)
	if err != nil {
		t.Fatal(err)
	}
	w := newBatchWriter(64) // larger than a batch: only release sends in time
	outPC := ipv4.NewPacketConn(out)
	sinkAddr := sink.LocalAddr().(*net.UDPAddr)
	_ = rx.SetReadDeadline(time.Now().Add(5 * time.Second))
	data, _, _, err := r.read(func(data, _ []byte, _ netip.AddrPort) bool {
		if string(data) == "stop" {
			return true
		}
		w.add(outPC, out, nil, data, sinkAddr)
		return false
	}, w.flush)
	w.flush()
	if err != nil || string(data) != "stop" {
		t.Fatalf("read: %q, %v", data, err)
	}
	buf := make([]byte, 64)
	_ = sink.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := 0; i < n; i++ {
		k, _, err := sink.ReadFrom(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if want := fmt.Sprintf("payload-%02d", i); string(buf[:k]) != want {
			t.Fatalf("datagram %d is %q, want %q", i, buf[:k], want)
		}
	}
}

// A wildcard TURN listener is a dual-stack IPv6 socket; sendmmsg from it
// carries IPv4 client addresses.
func TestBatchWriterOnDualStackListener(t *testing.T) {
	socks, err := listenUDP("0.0.0.0", 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	out := socks[0].(*net.UDPConn)
	defer out.Close()
	rx, _ := udpPair(t)
	to := rx.LocalAddr().(*net.UDPAddr)
	w := newBatchWriter(8)
	pc := ipv4.NewPacketConn(out)
	want := []string{"one", "two", "three"}
	for _, m := range want {
		w.add(pc, out, nil, []byte(m), to)
	}
	if len(w.msgs) != len(want) {
		t.Fatalf("%d queued, want one batch of %d", len(w.msgs), len(want))
	}
	w.flush()
	_ = rx.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	for _, m := range want {
		n, _, err := rx.ReadFrom(buf)
		if err != nil || string(buf[:n]) != m {
			t.Fatalf("got %q, %v; want %q", buf[:n], err, m)
		}
	}
}
