// Package turnprof holds a Go benchmark that runs our TURN server
// (internal/turn) in process under the dusk-bench load generator, so it can
// be profiled with the standard tools:
//
//	go test -run '^$' -bench TURNRelay -benchtime 200000x -cpuprofile cpu.out ./internal/bench/turnprof
//	go tool pprof -top -focus 'pion/turn|internal/turn' internal/bench/turnprof.test cpu.out
//
// The profile includes the generator (same process); focus on the server's
// packages. dusk-bench turn measures the real daemon against coturn.
package turnprof
