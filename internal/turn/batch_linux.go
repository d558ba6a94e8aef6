package turn

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// batchReader reads datagrams with recvmmsg inside one RawConn.Read, so a
// short batch (the socket is drained) goes straight to waiting for the
// next readiness edge instead of paying for a read that fails with EAGAIN,
// which is what every wake of a relay socket cost with one packet in
// flight (many allocations each at low rate, dusk-bench turn x100).
// Used by one goroutine only.
type batchReader struct {
	rc       syscall.RawConn
	hdrs     []unix.Mmsghdr
	iovs     []unix.Iovec
	names    []unix.RawSockaddrInet6 // room for either family
	bases    [][]byte                // each message's buffer including the headroom
	headroom int

	next, count int // messages received but not visited yet

	// Per read call; kept here so the RawRead closure allocates once.
	visit   visitFunc
	release func()
	kept    int // index of the message handed to the caller, or -1
	err     error
	readFn  func(fd uintptr) bool
}

func newBatchReader(uc *net.UDPConn, n, size, headroom int) (*batchReader, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("TURN socket: %w", err)
	}
	r := &batchReader{
		rc:       rc,
		hdrs:     make([]unix.Mmsghdr, n),
		iovs:     make([]unix.Iovec, n),
		names:    make([]unix.RawSockaddrInet6, n),
		bases:    make([][]byte, n),
		headroom: headroom,
	}
	buf := make([]byte, n*(headroom+size))
	for i := range r.hdrs {
		r.bases[i] = buf[i*(headroom+size) : (i+1)*(headroom+size)]
		r.iovs[i].Base = &r.bases[i][headroom]
		r.iovs[i].SetLen(size)
		h := &r.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
	}
	r.readFn = r.readLoop
	return r, nil
}

// read visits datagrams until visit keeps one, which it returns, or the
// socket fails. release runs before the reader reuses its buffers or may
// block: it must send whatever visit queued from them.
func (r *batchReader) read(visit visitFunc, release func()) (data, framed []byte, from netip.AddrPort, err error) {
	r.visit, r.release, r.kept, r.err = visit, release, -1, nil
	defer func() { r.visit, r.release = nil, nil }()
	if r.visitBuffered() {
		return r.keptMessage()
	}
	if err := r.rc.Read(r.readFn); err != nil {
		return nil, nil, netip.AddrPort{}, err
	}
	if r.err != nil {
		return nil, nil, netip.AddrPort{}, r.err
	}
	return r.keptMessage()
}

// readLoop runs inside RawConn.Read: returning false waits for the socket
// to become readable, true ends the Read.
func (r *batchReader) readLoop(fd uintptr) bool {
	for {
		r.release() // the next recvmmsg overwrites the buffers
		for i := range r.hdrs {
			r.hdrs[i].Hdr.Namelen = uint32(unsafe.Sizeof(r.names[i]))
		}
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), uintptr(len(r.hdrs)), unix.MSG_DONTWAIT, 0, 0)
		switch {
		case errno == unix.EINTR:
			continue
		case errno == unix.EAGAIN:
			return false
		case errno != 0:
			r.err = errno
			return true
		}
		r.next, r.count = 0, int(n)
		if r.visitBuffered() {
			return true
		}
		if int(n) < len(r.hdrs) {
			// Drained: the next datagram raises a new readiness edge.
			r.release()
			return false
		}
	}
}

// visitBuffered visits received messages; true when one was kept.
func (r *batchReader) visitBuffered() bool {
	for r.next < r.count {
		i := r.next
		r.next++
		data, framed := r.message(i)
		if r.visit(data, framed, r.from(i)) {
			r.kept = i
			return true
		}
	}
	return false
}

func (r *batchReader) message(i int) (data, framed []byte) {
	n := int(r.hdrs[i].Len)
	if n > len(r.bases[i])-r.headroom {
		n = len(r.bases[i]) - r.headroom
	}
	return r.bases[i][r.headroom : r.headroom+n], r.bases[i][:r.headroom+n]
}

func (r *batchReader) from(i int) netip.AddrPort {
	sa := &r.names[i]
	b := (*[2]byte)(unsafe.Pointer(&sa.Port)) // network byte order
	port := uint16(b[0])<<8 | uint16(b[1])
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
	}
	return netip.AddrPort{}
}

func (r *batchReader) keptMessage() (data, framed []byte, from netip.AddrPort, err error) {
	if r.kept < 0 {
		return nil, nil, netip.AddrPort{}, errors.New("TURN socket: read ended without a datagram")
	}
	data, framed = r.message(r.kept)
	return data, framed, r.from(r.kept), nil
}
