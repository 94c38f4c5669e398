package storetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-go/tasker/store"
)

// writeAll writes one of everything: template, task, steps with an edge,
// a transition and a queue message, and checks that tx reads its own writes.
func (s *suite) writeAll(tx store.Tx, task string, steps [2]string) error {
	if _, err := tx.TemplateUpsert(s.ctx, store.TemplateUpsertParams{
		Namespace: "ns", Name: "t", Version: "1", ContentHash: "h", Source: []byte("s"), Now: t0,
	}); err != nil {
		return err
	}
	if err := tx.TaskInsert(s.ctx, store.TaskInsertParams{
		UUID: task, Namespace: "ns", Name: "t", Version: "1", State: "pending", Context: json.RawMessage(`{}`), Now: t0,
	}); err != nil {
		return err
	}
	if err := tx.StepsInsert(s.ctx, store.StepsInsertParams{
		TaskUUID: task, Namespace: "ns", Now: t0,
		Steps: []store.StepInsert{
			{UUID: steps[0], Name: "a", Position: 0, Callable: "h", MaxAttempts: 1},
			{UUID: steps[1], Name: "b", Position: 1, Callable: "h", MaxAttempts: 1},
		},
		Edges: []store.Edge{{From: steps[0], To: steps[1]}},
	}); err != nil {
		return err
	}
	if err := tx.TaskTransition(s.ctx, store.TaskTransitionParams{UUID: task, From: "pending", To: "initializing", Event: "start", Now: t0}); err != nil {
		return err
	}
	if err := tx.QueueSend(s.ctx, store.QueueSendParams{Now: t0, Messages: []store.QueueMessageInsert{
		{Queue: "q", TaskUUID: task, StepUUID: steps[0]},
	}}); err != nil {
		return err
	}
	got, err := tx.TaskGet(s.ctx, store.TaskGetParams{UUID: task, ForUpdate: true})
	if err != nil {
		return fmt.Errorf("read own write: %w", err)
	}
	if got.State != "initializing" {
		return fmt.Errorf("read own write: task state %q, want initializing", got.State)
	}
	rows, err := tx.StepsForTask(s.ctx, store.StepsForTaskParams{TaskUUID: task})
	if err != nil {
		return fmt.Errorf("read own write: %w", err)
	}
	if len(rows) != 2 {
		return fmt.Errorf("read own write: %d steps, want 2", len(rows))
	}
	return nil
}

func testTxRollback(s *suite) {
	task, steps := uuid.NewString(), [2]string{uuid.NewString(), uuid.NewString()}
	tx, err := s.d.Begin(s.ctx)
	if err != nil {
		s.t.Fatalf("Begin: %v", err)
	}
	if err := s.writeAll(tx, task, steps); err != nil {
		_ = tx.Rollback()
		s.t.Fatal(err)
	}
	if err := tx.Rollback(); err != nil {
		s.t.Fatalf("Rollback: %v", err)
	}

	_, err = s.r().TemplateGet(s.ctx, store.TemplateGetParams{Namespace: "ns", Name: "t", Version: "1"})
	s.wantErr("template after rollback", err, store.ErrNotFound)
	_, err = s.r().TaskGet(s.ctx, store.TaskGetParams{UUID: task})
	s.wantErr("task after rollback", err, store.ErrNotFound)
	for _, id := range steps {
		_, err = s.r().StepGet(s.ctx, store.StepGetParams{UUID: id})
		s.wantErr("step after rollback", err, store.ErrNotFound)
	}
	if h := s.taskHistory(task); len(h) != 0 {
		s.t.Errorf("%d history rows after rollback", len(h))
	}
	s.wantDepth("q", t0, 0, 0)

	// The database is usable after a rollback, and the same rows can be
	// written again.
	s.tx(func(tx store.Tx) error { return s.writeAll(tx, task, steps) })
}

func testTxCommit(s *suite) {
	task, steps := uuid.NewString(), [2]string{uuid.NewString(), uuid.NewString()}
	tx, err := s.d.Begin(s.ctx)
	if err != nil {
		s.t.Fatalf("Begin: %v", err)
	}
	if err := s.writeAll(tx, task, steps); err != nil {
		_ = tx.Rollback()
		s.t.Fatal(err)
	}
	// Until the commit, readers outside the transaction see nothing.
	_, err = s.r().TaskGet(s.ctx, store.TaskGetParams{UUID: task})
	s.wantErr("uncommitted task seen by Reader", err, store.ErrNotFound)
	if err := tx.Commit(); err != nil {
		s.t.Fatalf("Commit: %v", err)
	}

	if _, err := s.r().TemplateGet(s.ctx, store.TemplateGetParams{Namespace: "ns", Name: "t", Version: "1"}); err != nil {
		s.t.Errorf("template after commit: %v", err)
	}
	if got := s.task(task); got.State != "initializing" {
		s.t.Errorf("task state after commit = %q", got.State)
	}
	rows, err := s.r().StepsForTask(s.ctx, store.StepsForTaskParams{TaskUUID: task})
	if err != nil || len(rows) != 2 {
		s.t.Fatalf("steps after commit: %d, %v", len(rows), err)
	}
	s.wantStrings("parents after commit", rows[1].Parents, []string{steps[0]})
	s.wantTransitions("history after commit", task, s.taskHistory(task), [][3]string{{"pending", "initializing", "start"}})
	s.wantDepth("q", t0, 1, 0)
}

func testReaderIsReadOnly(s *suite) {
	r := s.r()
	id := uuid.NewString()
	err := r.TaskInsert(s.ctx, store.TaskInsertParams{
		UUID: id, Namespace: "ns", Name: "t", Version: "1", State: "pending", Context: json.RawMessage(`{}`), Now: t0,
	})
	if err == nil {
		s.t.Error("TaskInsert through Reader succeeded, want an error")
	}
	if _, err := r.TaskGet(s.ctx, store.TaskGetParams{UUID: id}); !errors.Is(err, store.ErrNotFound) {
		s.t.Errorf("task written through Reader: TaskGet error %v, want ErrNotFound", err)
	}

	if err := r.QueueSend(s.ctx, store.QueueSendParams{Now: t0, Messages: []store.QueueMessageInsert{{Queue: "q", TaskUUID: id}}}); err == nil {
		s.t.Error("QueueSend through Reader succeeded, want an error")
	}
	s.wantDepth("q", t0, 0, 0)

	task := s.newTask(store.TaskInsertParams{})
	if err := r.TaskTransition(s.ctx, store.TaskTransitionParams{UUID: task, From: "pending", To: "initializing", Event: "start", Now: t0}); err == nil {
		s.t.Error("TaskTransition through Reader succeeded, want an error")
	}
	if got := s.task(task); got.State != "pending" {
		s.t.Errorf("task moved through Reader to %q", got.State)
	}
}

// testConcurrentStepsClaim has several workers, each in its own
// transactions, drain one queue of step messages. Every message must be
// claimed exactly once and no step may run twice.
func testConcurrentStepsClaim(s *suite) {
	const (
		nSteps   = 200
		nWorkers = 8
	)
	task := s.newTask(store.TaskInsertParams{})
	names := make([]string, nSteps)
	for i := range names {
		names[i] = "s" + strconv.Itoa(i)
	}
	ids := s.newSteps(task, "ns", names...)
	s.enqueueSteps(task, "ns", ids, t0)

	var (
		mu       sync.Mutex
		byStep   = map[string]int{}
		byMsg    = map[int64]int{}
		total    int
		start    = make(chan struct{})
		wg       sync.WaitGroup
		failures = make(chan error, nWorkers)
	)
	for w := range nWorkers {
		wg.Go(func() {
			<-start
			owner := "worker-" + strconv.Itoa(w)
			for {
				var claimed []store.ClaimedStep
				err := store.InTx(s.ctx, s.d, func(tx store.Tx) error {
					var err error
					claimed, err = tx.StepsClaim(s.ctx, store.StepsClaimParams{
						Queues: []string{store.WorkerQueue("ns")}, Limit: 5, Lease: time.Hour, Owner: owner, Now: at(time.Second),
					})
					return err
				})
				if err != nil {
					failures <- fmt.Errorf("%s: %w", owner, err)
					return
				}
				if len(claimed) == 0 {
					return
				}
				mu.Lock()
				for _, c := range claimed {
					byStep[c.StepUUID]++
					byMsg[c.Message.ID]++
					total++
					if c.Attempt != 1 || c.Message.LeaseOwner != owner {
						s.t.Errorf("%s claimed %s as attempt %d owned by %q", owner, c.StepName, c.Attempt, c.Message.LeaseOwner)
					}
				}
				mu.Unlock()
			}
		})
	}
	close(start)
	wg.Wait()
	close(failures)
	for err := range failures {
		s.t.Errorf("claim transaction failed: %v", err)
	}

	if total != nSteps {
		s.t.Errorf("claimed %d steps in total, want %d", total, nSteps)
	}
	for id, n := range byStep {
		if n != 1 {
			s.t.Errorf("step %s claimed %d times", id, n)
		}
	}
	for id, n := range byMsg {
		if n != 1 {
			s.t.Errorf("message %d claimed %d times", id, n)
		}
	}
	if len(byStep) != nSteps || len(byMsg) != nSteps {
		s.t.Errorf("%d distinct steps and %d distinct messages claimed, want %d of each", len(byStep), len(byMsg), nSteps)
	}
	rows, err := s.r().StepsForTask(s.ctx, store.StepsForTaskParams{TaskUUID: task})
	if err != nil {
		s.t.Fatal(err)
	}
	for _, r := range rows {
		if r.State != "in_progress" || r.Attempts != 1 {
			s.t.Errorf("step %s: state %q attempts %d, want in_progress 1", r.Name, r.State, r.Attempts)
		}
	}
	s.wantDepth(store.WorkerQueue("ns"), at(time.Second), 0, nSteps)
}

// testConcurrentTaskTransition races transactions on the same
// compare-and-set: exactly one may win.
func testConcurrentTaskTransition(s *suite) {
	const racers = 8
	task := s.newTask(store.TaskInsertParams{})
	start := make(chan struct{})
	errs := make([]error, racers)
	var wg sync.WaitGroup
	for i := range racers {
		wg.Go(func() {
			<-start
			errs[i] = store.InTx(s.ctx, s.d, func(tx store.Tx) error {
				if _, err := tx.TaskGet(s.ctx, store.TaskGetParams{UUID: task}); err != nil {
					return err
				}
				return tx.TaskTransition(s.ctx, store.TaskTransitionParams{
					UUID: task, From: "pending", To: "initializing", Event: "start",
					Metadata: json.RawMessage(`{"racer": ` + strconv.Itoa(i) + `}`), Now: at(time.Second),
				})
			})
		})
	}
	close(start)
	wg.Wait()

	winners := 0
	for i, err := range errs {
		switch {
		case err == nil:
			winners++
		case !errors.Is(err, store.ErrStateConflict):
			s.t.Errorf("racer %d: error %v, want nil or ErrStateConflict", i, err)
		}
	}
	if winners != 1 {
		s.t.Errorf("%d racers won the transition, want exactly 1", winners)
	}
	h := s.taskHistory(task)
	s.wantTransitions("history", task, h, [][3]string{{"pending", "initializing", "start"}})
	if len(h) == 1 {
		var md struct{ Racer int }
		if err := json.Unmarshal(h[0].Metadata, &md); err != nil || errs[md.Racer] != nil {
			s.t.Errorf("history row metadata %s does not name the winner (err %v)", h[0].Metadata, err)
		}
	}
}
