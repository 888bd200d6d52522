package saga_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sagapipe/sagapipe/saga"
	"github.com/sagapipe/sagapipe/statemachine"
)

// recordedJournal is a journal as recorded under testdata/journals: the
// events with their recorded IDs and times, and the state they rebuild.
type recordedJournal struct {
	Events []struct {
		Type    statemachine.EventType `json:"type"`
		ID      string                 `json:"id"`
		Time    time.Time              `json:"time"`
		Payload *msg                   `json:"payload"`
		Timer   *saga.TimerFired       `json:"timer"`
	} `json:"events"`
	Want struct {
		State     statemachine.State `json:"state"`
		Data      orderData          `json:"data"`
		Completed []string           `json:"completed"`
		Attempt   int                `json:"attempt"`
	} `json:"want"`
}

func TestRecordedJournalsRebuildTheSameState(t *testing.T) {
	files, err := filepath.Glob("testdata/journals/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no recorded journals: %v", err)
	}
	m := ordersSaga(t).Machine()
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var j recordedJournal
			if err := json.Unmarshal(raw, &j); err != nil {
				t.Fatal(err)
			}
			events := make([]statemachine.Event, len(j.Events))
			for i, e := range j.Events {
				events[i] = statemachine.Event{Type: e.Type, ID: e.ID, Time: e.Time}
				switch {
				case e.Timer != nil:
					events[i].Payload = *e.Timer
				case e.Payload != nil:
					events[i].Payload = *e.Payload
				}
			}
			// Twice: a rebuild must not depend on anything but the journal.
			for range 2 {
				state, in, err := m.Replay(saga.Instance[orderData]{}, events)
				if err != nil {
					t.Fatal(err)
				}
				if state != j.Want.State || in.Data != j.Want.Data || fmt.Sprint(in.Completed) != fmt.Sprint(j.Want.Completed) || in.Attempt != j.Want.Attempt {
					t.Fatalf("rebuilt %s %+v; want %s %+v completed %v attempt %d",
						state, in, j.Want.State, j.Want.Data, j.Want.Completed, j.Want.Attempt)
				}
			}
		})
	}
}
