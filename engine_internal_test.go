package tasker

import (
	"testing"

	"github.com/tasker-go/tasker/state"
)

// TestSignalTaskKeepsNewestState: a waiter that has not taken a task's
// previous state gets the newest one, so a WaitTask woken late still
// learns that the task settled (and reads its row and steps at once).
func TestSignalTaskKeepsNewestState(t *testing.T) {
	e := &Engine{waiters: map[string]map[chan state.TaskState]struct{}{}}
	ch := make(chan state.TaskState, 1)
	e.waiters["t1"] = map[chan state.TaskState]struct{}{ch: {}}
	e.signalTask("t1", state.TaskStepsInProcess)
	e.signalTask("t1", state.TaskComplete)
	e.signalTask("t2", state.TaskError) // nobody waits: nothing to do
	select {
	case got := <-ch:
		if got != "complete" {
			t.Fatalf("waiter got %q, want the newest state, complete", got)
		}
	default:
		t.Fatal("waiter got no wake-up")
	}
	select {
	case got := <-ch:
		t.Fatalf("waiter got a second wake-up (%q); want one", got)
	default:
	}
}
