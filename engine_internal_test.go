package tasker

import (
	"testing"

	"github.com/tasker-go/tasker/state"
)

// TestSignalTaskKeepsNewestState: a waiter that has not taken a task's
// previous state gets the newest one, so a WaitTask woken late still
// learns that the task settled (and reads its row and steps at once).
func TestSignalTaskKeepsNewestState(t *testing.T) {
	e := &Engine{waiters: map[string]map[chan taskSignal]struct{}{}}
	ch := make(chan taskSignal, 1)
	e.waiters["t1"] = map[chan taskSignal]struct{}{ch: {}}
	e.signalTask("t1", taskSignal{state: state.TaskStepsInProcess})
	e.signalTask("t1", taskSignal{state: state.TaskComplete})
	e.signalTask("t2", taskSignal{state: state.TaskError}) // nobody waits: nothing to do
	select {
	case got := <-ch:
		if got.state != "complete" {
			t.Fatalf("waiter got %q, want the newest state, complete", got.state)
		}
	default:
		t.Fatal("waiter got no wake-up")
	}
	select {
	case got := <-ch:
		t.Fatalf("waiter got a second wake-up (%q); want one", got.state)
	default:
	}
}
