package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/sagapipe/sagapipe/service"
)

// runTopics is `orchestrator topics ensure`: the topics of every saga
// `run` serves, with the service's connection settings. A team's own
// service.Main has the same command.
func runTopics(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	sagas, err := servedSagas(2 * time.Second)
	if err != nil {
		fmt.Fprintf(stderr, "orchestrator topics: %v\n", err)
		return 1
	}
	return service.TopicsCommand(ctx, "orchestrator", args, stdout, stderr, sagas...)
}
