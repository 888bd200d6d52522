package testkit

import (
	"os/exec"
	"syscall"
)

// DieWithParent makes the kernel kill cmd if the process that started it
// dies first (a test binary's panic on -timeout runs no cleanup), so no
// child process outlives the tests.
func DieWithParent(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}
