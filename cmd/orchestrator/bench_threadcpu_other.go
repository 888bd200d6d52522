//go:build !linux

package main

import "time"

// threadCPU is not measured off Linux: the OTLP receiver's CPU then reads 0.
func threadCPU() time.Duration { return 0 }
