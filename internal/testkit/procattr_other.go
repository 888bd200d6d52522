//go:build !linux

package testkit

import "os/exec"

// DieWithParent does nothing where the kernel cannot tie a child's life to
// its parent's: the tests' cleanups still stop their children.
func DieWithParent(*exec.Cmd) {}
