package saga

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/sagapipe/sagapipe/statemachine"
)

type benchData struct {
	OrderID, CustomerID, SKU, PaymentID string
	Quantity                            int32
	AmountCents                         int64
}

type benchMsg struct{ OrderID string }

func benchEvent(name string) EventDef[benchMsg] {
	return Event[benchMsg]("bench."+name, fmt.Sprintf(`{"type":"record","name":%q,"fields":[{"name":"OrderID","type":"string"}]}`, name))
}

// BenchmarkInFlightSagaState measures what the runtime itself holds per
// in-flight saga: its record (state, data, completed steps, seen event IDs,
// timer) in the partition's map, for sagas started and waiting at their
// second step. The Kafka client's buffers and, with the embedded stack, the
// broker's log are not counted ('orchestrator bench' measures the
// orchestrator's whole heap per in-flight saga). Target for issue 5: ≤ 4 KiB.
func BenchmarkInFlightSagaState(b *testing.B) {
	build := func(d benchData) benchMsg { return benchMsg{OrderID: d.OrderID} }
	bld := New[benchData]("bench", `{"type":"record","name":"D","fields":[]}`).
		StartOn(Reply(benchEvent("Start"), func(d *benchData, e benchMsg) {
			d.OrderID, d.CustomerID, d.SKU = e.OrderID, "customer-0042", "sku-007"
			d.Quantity, d.AmountCents = 3, 4500
		}))
	first := bld.Step("first").Command("first.commands", Cmd(benchEvent("Do1"), build)).
		OnSuccess(Reply[benchData](benchEvent("Done1"), nil))
	Compensate(first, Cmd(benchEvent("Undo1"), build), benchEvent("Undone1"))
	bld.Step("second").Command("second.commands", Cmd(benchEvent("Do2"), build)).
		OnSuccess(Reply[benchData](benchEvent("Done2"), nil))
	s, err := bld.Build()
	if err != nil {
		b.Fatal(err)
	}
	n := max(b.N, 10_000)
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	now := time.Now()
	before := heap()
	sagas := make(map[string]*sagaRecord[benchData])
	for i := range n {
		id := fmt.Sprintf("order-%07d", i)
		rec := newSagaRecord[benchData](id, id, now, journalPosition{}, 1)
		for _, ev := range []statemachine.Event{
			{Type: s.StartEventType(), ID: fmt.Sprintf("0192f0c4-7a1b-7c3d-8e4f-%012d", i), Time: now, Payload: benchMsg{OrderID: id}},
			{Type: ReplyEventType("first", "bench.Done1"), ID: fmt.Sprintf("0192f0c4-7a1b-7c3d-9e4f-%012d", i), Time: now, Payload: benchMsg{OrderID: id}},
		} {
			res, err := s.machine.Apply(rec.state, rec.inst, ev)
			if err != nil {
				b.Fatal(err)
			}
			rec.state, rec.inst = res.To, res.Data
			rec.see(ev.ID)
			for _, e := range res.Effects {
				if e.Kind == SetTimer {
					rec.timer = &pendingTimer{step: e.Step, attempt: int32(e.Attempt), deadline: ev.Time.Add(e.After)}
				}
			}
		}
		sagas[id] = rec
	}
	after := heap()
	if len(sagas) != n {
		b.Fatal("lost sagas")
	}
	b.ReportMetric(float64(after-before)/float64(n), "B/saga")
	runtime.KeepAlive(sagas)
}
