//go:build !linux

package main

import "os/exec"

// dieWithTest does nothing where the kernel cannot tie a child's life to
// its parent's: t.Cleanup still stops the child.
func dieWithTest(*exec.Cmd) {}
