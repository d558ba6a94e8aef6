package testutil

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// CutProxy is a TCP relay in front of a test engine (PostgreSQL, Redis):
// taking it down is the engine going away for whatever dials through it
// (new connections refused, open ones cut) without stopping the server
// other tests share; Up brings it back at the same address.
type CutProxy struct {
	t      testing.TB
	target string
	addr   string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewCutProxy starts a proxy to target on a free loopback port; it is
// taken down at the end of the test.
func NewCutProxy(t testing.TB, target string) *CutProxy {
	c := &CutProxy{t: t, target: target, conns: map[net.Conn]struct{}{}}
	c.listen("127.0.0.1:0")
	t.Cleanup(c.Down)
	return c
}

// Addr is the proxy's host:port.
func (c *CutProxy) Addr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.addr
}

// Up serves again at the address of the first start.
func (c *CutProxy) Up() { c.listen(c.Addr()) }

func (c *CutProxy) listen(addr string) {
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ { // the port may linger briefly after Down
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.ln, c.addr = ln, ln.Addr().String()
	c.mu.Unlock()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.DialTimeout("tcp", c.target, 5*time.Second)
			if err != nil {
				_ = in.Close()
				continue
			}
			c.mu.Lock()
			c.conns[in], c.conns[out] = struct{}{}, struct{}{}
			c.mu.Unlock()
			c.wg.Add(2)
			pipe := func(dst, src net.Conn) {
				defer c.wg.Done()
				_, _ = io.Copy(dst, src)
				_ = dst.Close()
				_ = src.Close()
			}
			go pipe(out, in)
			go pipe(in, out)
		}
	}()
}

// Down refuses new connections and cuts the open ones.
func (c *CutProxy) Down() {
	c.mu.Lock()
	if c.ln != nil {
		_ = c.ln.Close()
		c.ln = nil
	}
	for conn := range c.conns {
		_ = conn.Close()
		delete(c.conns, conn)
	}
	c.mu.Unlock()
	c.wg.Wait()
}
