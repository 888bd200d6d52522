//go:build !linux

package e2e_test

import "os/exec"

// dieWithTest does nothing where the kernel cannot tie a child's life to
// its parent's: t.Cleanup still stops the participant.
func dieWithTest(*exec.Cmd) {}
