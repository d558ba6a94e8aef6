// Package connprof holds an opt-in test that runs our libp2p node
// (internal/p2p, default configuration) in process, holds N light client
// connections and writes a heap profile while they are open, to find what
// a connection costs:
//
//	DUSK_CONNPROF_N=5000 DUSK_CONNPROF_HEAP=/tmp/heap.out go test -run ConnMemory -v ./internal/bench/connprof
//	go tool pprof -sample_index=inuse_space -top internal/bench/connprof.test /tmp/heap.out
//
// Clients live in the same process; their allocations sit under
// lightpeer.Dial in the profile and can be excluded with -ignore lightpeer.
// dusk-bench conns measures the real daemon.
package connprof
