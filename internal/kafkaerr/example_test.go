package kafkaerr_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/internal/kafkaerr"
)

// A consumer loop logs the errors the client recovers from by itself and
// polls on; the others stop it.
func ExampleTransient() {
	stack, err := devstack.Start(devstack.Config{})
	if err != nil {
		panic(err)
	}
	addrs := stack.KafkaAddrs()
	stack.Close() // the broker is gone: dialing it fails

	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.RequestRetries(0))
	if err != nil {
		panic(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	pingErr := cl.Ping(ctx)

	fmt.Println("broker gone:", kafkaerr.Transient(pingErr))
	fmt.Println("leader moved:", kafkaerr.Transient(kerr.NotLeaderForPartition))
	fmt.Println("not authorized:", kafkaerr.Transient(kerr.TopicAuthorizationFailed))
	fmt.Println("a bug of ours:", kafkaerr.Transient(errors.New("nil map")))
	// Output:
	// broker gone: true
	// leader moved: true
	// not authorized: false
	// a bug of ours: false
}
