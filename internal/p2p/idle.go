package p2p

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/zap"
)

// Idle connections: rust-libp2p closes a connection once no handler keeps
// it alive (the Rust relay: 300 s); go-libp2p has no such timer, so without
// one a connection that never opens a stream holds its slot forever. The
// node closes inbound connections that have had no stream for
// DUSK_IDLE_CONNECTION_TIMEOUT while their peer holds no reservation. A
// stream of either direction (a Rust client's ping stream, gossipsub, a
// circuit) keeps the connection.

// maxSweepInterval bounds how late an idle connection or an expired
// reservation is noticed.
const maxSweepInterval = 30 * time.Second

func sweepInterval(idle time.Duration) time.Duration {
	if idle <= 0 {
		return maxSweepInterval
	}
	return min(max(idle/10, 50*time.Millisecond), maxSweepInterval)
}

// activity records, per peer, when a stream last opened or ended. The
// resource manager sees every stream of every connection, which the
// network's notifications do not report.
type activity struct {
	mu   sync.Mutex
	last map[peer.ID]time.Time
}

func (a *activity) touch(p peer.ID) {
	now := time.Now()
	a.mu.Lock()
	a.last[p] = now
	a.mu.Unlock()
}

func (a *activity) get(p peer.ID) (time.Time, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t, ok := a.last[p]
	return t, ok
}

func (a *activity) forget(p peer.ID) {
	a.mu.Lock()
	delete(a.last, p)
	a.mu.Unlock()
}

// forgetUnless drops the entries of peers keep rejects (a stream that ended
// after its peer's disconnect notification re-adds an entry).
func (a *activity) forgetUnless(keep func(peer.ID) bool) {
	a.mu.Lock()
	ps := make([]peer.ID, 0, len(a.last))
	for p := range a.last {
		ps = append(ps, p)
	}
	a.mu.Unlock()
	for _, p := range ps { // keep is called without the lock: it may take the swarm's
		if !keep(p) {
			a.forget(p)
		}
	}
}

// activityRM is the resource manager with stream opening and ending
// recorded in an activity.
type activityRM struct {
	network.ResourceManager
	act *activity
}

func (r *activityRM) OpenStream(p peer.ID, dir network.Direction) (network.StreamManagementScope, error) {
	s, err := r.ResourceManager.OpenStream(p, dir)
	if err != nil {
		return nil, err
	}
	r.act.touch(p)
	return &activityScope{StreamManagementScope: s, act: r.act, p: p}, nil
}

type activityScope struct {
	network.StreamManagementScope
	act  *activity
	p    peer.ID
	once sync.Once
}

func (s *activityScope) Done() {
	s.once.Do(func() { s.act.touch(s.p) })
	s.StreamManagementScope.Done()
}

// sweepLoop closes idle connections and drops expired reservation
// bookkeeping until stop is closed.
func (n *Node) sweepLoop(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(sweepInterval(n.cfg.IdleConnTimeout))
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			n.expireReservations(now)
			n.closeIdle(now)
		}
	}
}

// closeIdle closes every inbound connection without streams whose peer has
// had no stream for the idle timeout and holds no reservation.
func (n *Node) closeIdle(now time.Time) {
	idle := n.cfg.IdleConnTimeout
	if idle <= 0 {
		return
	}
	nw := n.h.Network()
	closed := 0
	for _, c := range nw.Conns() {
		st := c.Stat()
		if st.Direction != network.DirInbound || st.NumStreams > 0 {
			continue
		}
		p := c.RemotePeer()
		since := st.Opened
		if t, ok := n.act.get(p); ok && t.After(since) {
			since = t
		}
		if now.Sub(since) < idle || n.hasReservation(p, now) {
			continue
		}
		_ = c.Close()
		closed++
	}
	if closed > 0 {
		n.m.idleClosed.Add(float64(closed))
		if ce := n.log.Check(zap.DebugLevel, "closed idle connections"); ce != nil {
			ce.Write(zap.Int("closed", closed), zap.Duration("idle_timeout", idle))
		}
	}
	n.act.forgetUnless(func(p peer.ID) bool { return nw.Connectedness(p) == network.Connected })
}
