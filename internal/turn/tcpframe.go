package turn

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// TURN over TCP is a byte stream of STUN messages and ChannelData
// messages (RFC 8656 §12.5). We cut it into frames ourselves, with int
// arithmetic, before anything reaches pion: pion's STUNConn computes the
// frame size in uint16, so a length field near 0xFFFF wraps to a size of
// 0..19 and it returns a 0-byte frame without consuming it. Wrapped in a
// second STUNConn (pion wraps every accepted connection in one), that
// 0-byte read recursed until the stack overflowed and the whole daemon
// died. Every frame we hand on is one that pion's STUNConn cuts out exactly
// as we did (see handOn), so its uint16 arithmetic never sees a large length.

// tcpMaxFrame is the largest frame accepted: pion's inbound MTU (1600
// bytes; pion drops a frame of exactly that size itself).
const tcpMaxFrame = 1600

const (
	stunHeader   = 20
	stunCookie   = 0x2112A442
	chanDataHead = 4
)

// errTCPFrame is the cause of every framing failure; the connection that
// sent the frame is closed, and only it.
var errTCPFrame = errors.New("TURN TCP: bad frame")

// frameError describes a frame that cannot be a TURN frame.
type frameError struct {
	reason string
	length int // the length field, -1 if none was read
}

func (e *frameError) Error() string {
	if e.length < 0 {
		return fmt.Sprintf("%v: %s", errTCPFrame, e.reason)
	}
	return fmt.Sprintf("%v: %s (length field %d)", errTCPFrame, e.reason, e.length)
}

func (e *frameError) Unwrap() error { return errTCPFrame }

// nextFrame returns the size of the frame at the start of b: n > 0 when b
// holds a whole frame, n == 0 when more bytes are needed, an error
// (*frameError) when b cannot start a frame of at most max bytes. The first
// two bits decide: 00 STUN (magic cookie at 4..8, length a multiple of 4),
// 01 ChannelData (channel numbers 0x4000-0x7FFF, padded to 4 over TCP).
func nextFrame(b []byte, max int) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	var size int
	switch b[0] >> 6 {
	case 0:
		if len(b) < 4 {
			return 0, nil
		}
		l := int(binary.BigEndian.Uint16(b[2:4]))
		if l%4 != 0 {
			return 0, &frameError{"STUN length not a multiple of 4", l}
		}
		if size = stunHeader + l; size > max {
			return 0, &frameError{"STUN message too long", l}
		}
		if len(b) < 8 {
			return 0, nil
		}
		if binary.BigEndian.Uint32(b[4:8]) != stunCookie {
			return 0, &frameError{"no STUN magic cookie", -1}
		}
	case 1:
		if len(b) < chanDataHead {
			return 0, nil
		}
		l := int(binary.BigEndian.Uint16(b[2:4]))
		if size = chanDataHead + (l+3)&^3; size > max {
			return 0, &frameError{"ChannelData too long", l}
		}
	default:
		return 0, &frameError{"neither STUN nor ChannelData", -1}
	}
	if len(b) < size {
		return 0, nil
	}
	return size, nil
}

// handOn reports whether a whole frame (from nextFrame) may go to pion.
// pion's STUNConn re-cuts what we hand it; it checks for the STUN magic
// cookie before the ChannelData range and wants 9 bytes before it cuts
// anything. So a ChannelData frame whose payload starts with the cookie
// would be cut as a STUN message, and one of 4 or 8 bytes would wait for,
// and be parsed together with, the next frame. Both only come from a
// crafted stream (no ICE, DTLS or RTP packet starts with the cookie or
// fits in 4 bytes); they are dropped so pion's view of the stream stays
// the same as ours.
func handOn(frame []byte) bool {
	if frame[0]>>6 != 1 {
		return true
	}
	if len(frame) < 9 {
		return false
	}
	return len(frame) < stunHeader || binary.BigEndian.Uint32(frame[4:8]) != stunCookie
}
