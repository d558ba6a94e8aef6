package bench

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// PinProcess restricts every thread of process pid (0 = this process) to
// one CPU. Threads created later inherit the mask from their creator, so
// a Go process stays on that CPU.
func PinProcess(pid, cpu int) error {
	if pid == 0 {
		pid = os.Getpid()
	}
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("pin: %w", err)
	}
	var set unix.CPUSet
	set.Set(cpu)
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil && err != unix.ESRCH {
			return fmt.Errorf("pin thread %d of %d to CPU %d: %w", tid, pid, cpu, err)
		}
	}
	return nil
}
