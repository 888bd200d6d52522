package statemachine_test

import (
	"fmt"

	"github.com/sagapipe/sagapipe/statemachine"
)

// A door that counts how often it was opened.
func Example() {
	door, err := statemachine.Build(statemachine.Definition[int, string]{
		Name:    "door",
		Initial: "Closed",
		Transitions: []statemachine.Transition[int, string]{
			{From: "Closed", On: "open", To: "Open", Action: func(n int, _ statemachine.Event) (int, []string) {
				return n + 1, []string{"ring bell"}
			}},
			{From: "Open", On: "close", To: "Closed"},
		},
	})
	if err != nil {
		panic(err)
	}
	r, _ := door.Apply(door.Initial(), 0, statemachine.Event{Type: "open"})
	fmt.Println(r.To, r.Data, r.Effects)
	_, err = door.Apply(r.To, r.Data, statemachine.Event{Type: "open"})
	fmt.Println(err)
	fmt.Print(door.Mermaid())
	// Output:
	// Open 1 [ring bell]
	// statemachine door: no transition from state "Open" on event "open"
	// stateDiagram-v2
	//     [*] --> Closed
	//     Closed --> Open : open
	//     Open --> Closed : close
}
