// Package testutil holds helpers shared by tests only.
package testutil

import "go.uber.org/goleak"

// IgnoreLibp2p lists goroutines that go-libp2p and its dependencies start
// once per process and never stop; tests of every package share it.
func IgnoreLibp2p() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("github.com/libp2p/go-libp2p/p2p/transport/tcpreuse.(*ConnMgr).Close"),
		goleak.IgnoreAnyFunction("github.com/libp2p/go-flow-metrics.(*sweeper).run"),
		goleak.IgnoreAnyFunction("github.com/libp2p/go-libp2p/core/network.(*DefaultGlobalTimer).Start"),
	}
}
