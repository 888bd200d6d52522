// Command trips-participants runs the trips saga's flight, hotel and
// billing services (flags: --brokers, --registry).
package main

import (
	"github.com/sagapipe/sagapipe/examples/trips"
	"github.com/sagapipe/sagapipe/participant"
)

func main() { participant.Main(trips.NewDesks().Services()...) }
