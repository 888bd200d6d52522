package testkit_test

import (
	"fmt"
	"log/slog"

	"github.com/sagapipe/sagapipe/internal/testkit"
)

// A SyncBuffer takes the writes of a logger running in other goroutines
// while a test reads what was written.
func ExampleSyncBuffer() {
	var logs testkit.SyncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{} // no time: the output is stable
			}
			return a
		}}))
	done := make(chan struct{})
	go func() {
		log.Info("partition restored", "partition", 0)
		close(done)
	}()
	<-done
	fmt.Print(logs.String())
	// Output: level=INFO msg="partition restored" partition=0
}
