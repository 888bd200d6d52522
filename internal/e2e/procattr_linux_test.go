package e2e_test

import (
	"os/exec"
	"syscall"
)

// dieWithTest makes the kernel kill cmd if the test binary dies first (a
// panic on -timeout runs no cleanup), so no participant outlives its broker.
func dieWithTest(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
