package tasker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tasker-go/tasker/internal/orchestration"
)

// fakeCreates stands in for the engine's two ways of writing tasks. A
// request's Reason names it; the task made for it carries the same name
// in its UUID, so every test can check that a call got its own task.
type fakeCreates struct {
	mu      sync.Mutex
	batches [][]string // the requests of each many call, in order
	ones    []string
	// hold, when set, blocks one and many until it is closed.
	hold chan struct{}
	// refuse maps a request to the error that refuses it.
	refuse map[string]error
	// fail, when set, is the error of every many call (a database fault);
	// failFirst makes it come as a BatchError naming the first request, as
	// a fault in the batch's first insert does.
	fail      error
	failFirst bool
	// panicMany makes many panic.
	panicMany bool
	// pause is how long one and many take, so that calls pile up.
	pause time.Duration
	// entered gets a value each time one or many starts.
	entered chan struct{}
}

func (f *fakeCreates) wait(ctx context.Context) error {
	if f.entered != nil {
		f.entered <- struct{}{}
	}
	if f.pause > 0 {
		time.Sleep(f.pause)
	}
	if f.hold == nil {
		return context.Cause(ctx) // nil while ctx lives
	}
	select {
	case <-f.hold:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

func (f *fakeCreates) one(ctx context.Context, p orchestration.CreateTaskParams) (*Task, error) {
	if err := f.wait(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ones = append(f.ones, p.Reason)
	if err := f.refuse[p.Reason]; err != nil {
		return nil, err
	}
	return &Task{UUID: "task-" + p.Reason}, nil
}

// many refuses a duplicate as the database does, by failing the batch
// with a BatchError, and any other refused request on its own.
func (f *fakeCreates) many(ctx context.Context, ps []orchestration.CreateTaskParams) ([]*Task, []error, error) {
	if err := f.wait(ctx); err != nil {
		return nil, nil, err
	}
	if f.panicMany {
		panic("many broke")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = p.Reason
	}
	f.batches = append(f.batches, names)
	if f.fail != nil && f.failFirst {
		return nil, nil, &orchestration.BatchError{Index: 0, Err: f.fail}
	}
	if f.fail != nil {
		return nil, nil, f.fail
	}
	out, refused := make([]*Task, len(ps)), make([]error, len(ps))
	for i, p := range ps {
		err := f.refuse[p.Reason]
		switch {
		case errors.Is(err, ErrDuplicateTask):
			return nil, nil, &orchestration.BatchError{Index: i, Err: err}
		case err != nil:
			refused[i] = err
		default:
			out[i] = &Task{UUID: "task-" + p.Reason}
		}
	}
	return out, refused, nil
}

func (f *fakeCreates) queue(limit int) *createQueue {
	return &createQueue{limit: limit, one: f.one, many: f.many, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

type createOutcome struct {
	name string
	task *Task
	err  error
}

// startCreates starts a call per name, in order, each once the previous
// one is queued or writing, and returns their outcomes' channel.
func startCreates(t *testing.T, ctx context.Context, q *createQueue, names ...string) <-chan createOutcome {
	t.Helper()
	out := make(chan createOutcome, len(names))
	for _, n := range names {
		go func() {
			task, err := q.create(ctx, orchestration.CreateTaskParams{Reason: n})
			out <- createOutcome{n, task, err}
		}()
		waitFor(t, func() bool {
			q.mu.Lock()
			defer q.mu.Unlock()
			for _, c := range q.waiting {
				if c.p.Reason == n {
					return true
				}
			}
			return false
		})
	}
	return out
}

// writeFirst starts call "a" and returns once it is writing, holding the
// queue's only turn until f.hold lets it go.
func writeFirst(q *createQueue, f *fakeCreates) <-chan createOutcome {
	out := make(chan createOutcome, 1)
	go func() {
		task, err := q.create(context.Background(), orchestration.CreateTaskParams{Reason: "a"})
		out <- createOutcome{"a", task, err}
	}()
	<-f.entered
	return out
}

// waitIdle waits for the queue to have no transaction in flight and no
// call waiting, as it must once every call has returned.
func waitIdle(t *testing.T, q *createQueue) {
	t.Helper()
	waitFor(t, func() bool {
		q.mu.Lock()
		defer q.mu.Unlock()
		return q.running == 0 && len(q.waiting) == 0
	})
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

func collectOutcomes(t *testing.T, ch <-chan createOutcome, n int) map[string]createOutcome {
	t.Helper()
	got := map[string]createOutcome{}
	for range n {
		select {
		case o := <-ch:
			got[o.name] = o
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d of %d calls returned", len(got), n)
		}
	}
	return got
}

// TestCreateQueueAloneAtLightLoad: calls that do not overlap are written
// one by one, each in its own transaction, as before the queue existed.
func TestCreateQueueAloneAtLightLoad(t *testing.T) {
	f := &fakeCreates{}
	q := f.queue(1)
	for i := range 3 {
		name := fmt.Sprint(i)
		task, err := q.create(context.Background(), orchestration.CreateTaskParams{Reason: name})
		if err != nil || task.UUID != "task-"+name {
			t.Fatalf("call %d: task %v, err %v", i, task, err)
		}
	}
	if len(f.ones) != 3 || len(f.batches) != 0 {
		t.Fatalf("ones %v, batches %v: want three single writes and no batch", f.ones, f.batches)
	}
}

// TestCreateQueueSharesTransactions: calls that arrive while the limit of
// transactions is in flight are written together, in arrival order, and
// each gets its own task.
func TestCreateQueueSharesTransactions(t *testing.T) {
	f := &fakeCreates{hold: make(chan struct{}), entered: make(chan struct{}, 10)}
	q := f.queue(1)
	out := writeFirst(q, f) // "a" is writing alone and holds the only turn
	rest := startCreates(t, context.Background(), q, "b", "c", "d")
	close(f.hold)
	got := collectOutcomes(t, out, 1)
	for k, v := range collectOutcomes(t, rest, 3) {
		got[k] = v
	}
	for _, n := range []string{"a", "b", "c", "d"} {
		if o := got[n]; o.err != nil || o.task == nil || o.task.UUID != "task-"+n {
			t.Errorf("call %s: task %v, err %v; want its own task", n, o.task, o.err)
		}
	}
	if fmt.Sprint(f.ones) != "[a]" || fmt.Sprint(f.batches) != "[[b c d]]" {
		t.Fatalf("ones %v, batches %v; want a alone, then b c d in one batch", f.ones, f.batches)
	}
	waitIdle(t, q)
}

// TestCreateQueueRefusalIsItsOwn: a request the batch refuses gets its own
// error and the other calls of the batch get their tasks: in the same
// transaction for bad input, in the next one for an identity collision,
// which fails the transaction it is in.
func TestCreateQueueRefusalIsItsOwn(t *testing.T) {
	for _, tc := range []struct {
		refusal error
		batches string
	}{
		{fmt.Errorf("create x task: %w", ErrDuplicateTask), "[[b c d] [b d]]"},
		{fmt.Errorf("invalid task context: %w", ErrInvalidContext), "[[b c d]]"},
	} {
		t.Run(tc.refusal.Error(), func(t *testing.T) {
			f := &fakeCreates{hold: make(chan struct{}), entered: make(chan struct{}, 10), refuse: map[string]error{"c": tc.refusal}}
			q := f.queue(1)
			out := writeFirst(q, f)
			rest := startCreates(t, context.Background(), q, "b", "c", "d")
			close(f.hold)
			collectOutcomes(t, out, 1)
			got := collectOutcomes(t, rest, 3)
			if !errors.Is(got["c"].err, tc.refusal) || got["c"].task != nil {
				t.Errorf("refused call c: task %v, err %v; want %v", got["c"].task, got["c"].err, tc.refusal)
			}
			for _, n := range []string{"b", "d"} {
				if o := got[n]; o.err != nil || o.task.UUID != "task-"+n {
					t.Errorf("call %s: task %v, err %v; want its own task", n, o.task, o.err)
				}
			}
			if fmt.Sprint(f.batches) != tc.batches {
				t.Fatalf("batches %v; want %s", f.batches, tc.batches)
			}
		})
	}
}

// TestCreateQueueDatabaseFault: a batch that fails for no request in
// particular (even when the fault came while writing one of them) is
// written call by call, so each call gets what it would have got alone.
func TestCreateQueueDatabaseFault(t *testing.T) {
	for _, first := range []bool{false, true} {
		t.Run(fmt.Sprint("named=", first), func(t *testing.T) { testCreateQueueDatabaseFault(t, first) })
	}
}

func testCreateQueueDatabaseFault(t *testing.T, first bool) {
	f := &fakeCreates{hold: make(chan struct{}), entered: make(chan struct{}, 10), failFirst: first,
		fail: errors.New("connection reset"), refuse: map[string]error{"c": ErrTemplateNotFound}}
	q := f.queue(1)
	out := writeFirst(q, f)
	rest := startCreates(t, context.Background(), q, "b", "c", "d")
	close(f.hold)
	collectOutcomes(t, out, 1)
	got := collectOutcomes(t, rest, 3)
	if o := got["b"]; o.err != nil || o.task.UUID != "task-b" {
		t.Errorf("call b: task %v, err %v; want its own task", o.task, o.err)
	}
	if !errors.Is(got["c"].err, ErrTemplateNotFound) {
		t.Errorf("call c: err %v; want its own refusal", got["c"].err)
	}
	if o := got["d"]; o.err != nil || o.task.UUID != "task-d" {
		t.Errorf("call d: task %v, err %v; want its own task", o.task, o.err)
	}
	if fmt.Sprint(f.ones) != "[a b c d]" {
		t.Fatalf("single writes %v; want a, then b, c and d one by one after the batch failed", f.ones)
	}
}

// TestCreateQueueWaiterCancelled: a call whose context ends while it waits
// for its turn returns at once and is never written.
func TestCreateQueueWaiterCancelled(t *testing.T) {
	f := &fakeCreates{hold: make(chan struct{}), entered: make(chan struct{}, 10)}
	q := f.queue(1)
	out := writeFirst(q, f)
	ctx, cancel := context.WithCancel(context.Background())
	gone := startCreates(t, ctx, q, "b")
	rest := startCreates(t, context.Background(), q, "c")
	cancel()
	if o := collectOutcomes(t, gone, 1)["b"]; !errors.Is(o.err, context.Canceled) {
		t.Fatalf("cancelled waiter: err %v; want context.Canceled", o.err)
	}
	close(f.hold)
	collectOutcomes(t, out, 1)
	if o := collectOutcomes(t, rest, 1)["c"]; o.err != nil || o.task.UUID != "task-c" {
		t.Fatalf("call c: task %v, err %v", o.task, o.err)
	}
	if fmt.Sprint(f.ones) != "[a c]" || len(f.batches) != 0 {
		t.Fatalf("ones %v, batches %v; want a, then c alone: the cancelled call never written", f.ones, f.batches)
	}
}

// TestCreateQueueCancelledInBatch: a call whose context ends while the
// transaction it shares is being written returns at once, and the others'
// tasks are still written in that transaction; once every call of a batch
// has given up, its transaction is cut short, and the queue goes on.
func TestCreateQueueCancelledInBatch(t *testing.T) {
	f := &fakeCreates{hold: make(chan struct{}), entered: make(chan struct{}, 10)}
	q := f.queue(1)
	out := writeFirst(q, f)
	ctxB, cancelB := context.WithCancelCause(context.Background())
	stop := errors.New("caller went away")
	b := startCreates(t, ctxB, q, "b")
	rest := startCreates(t, context.Background(), q, "c", "d")
	f.hold <- struct{}{} // a finishes; [b c d] is written and waits in many
	<-f.entered
	cancelB(stop)
	if o := collectOutcomes(t, b, 1)["b"]; !errors.Is(o.err, stop) {
		t.Fatalf("cancelled call b: task %v, err %v; want its context's cause, at once", o.task, o.err)
	}
	close(f.hold)
	collectOutcomes(t, out, 1)
	got := collectOutcomes(t, rest, 2)
	for _, n := range []string{"c", "d"} {
		if o := got[n]; o.err != nil || o.task.UUID != "task-"+n {
			t.Errorf("call %s: task %v, err %v; want its own task", n, o.task, o.err)
		}
	}
	if fmt.Sprint(f.batches) != "[[b c d]]" {
		t.Fatalf("batches %v; want [b c d] written once", f.batches)
	}

	// Every call of the next batch gives up: its write is cut short, and
	// nothing is written again for calls that have returned.
	f2 := &fakeCreates{hold: make(chan struct{}), entered: make(chan struct{}, 10)}
	q2 := f2.queue(1)
	out2 := writeFirst(q2, f2)
	ctx, cancel := context.WithCancel(context.Background())
	gone := startCreates(t, ctx, q2, "e", "f")
	f2.hold <- struct{}{}
	<-f2.entered // [e f] waits in many
	cancel()
	collectOutcomes(t, gone, 2)
	collectOutcomes(t, out2, 1)
	waitIdle(t, q2)
	if fmt.Sprint(f2.ones) != "[a]" || fmt.Sprint(f2.batches) != "[]" {
		t.Fatalf("ones %v, batches %v; want only a written: the abandoned batch cut short, nobody written alone", f2.ones, f2.batches)
	}
	close(f2.hold)
	if task, err := q2.create(context.Background(), orchestration.CreateTaskParams{Reason: "g"}); err != nil || task.UUID != "task-g" {
		t.Fatalf("after an abandoned batch: task %v, err %v", task, err)
	}
}

// TestCreateQueuePanic: a panic while writing a shared transaction fails
// the batch's calls with an error naming it instead of taking the process
// down, and leaves the queue working.
func TestCreateQueuePanic(t *testing.T) {
	f := &fakeCreates{hold: make(chan struct{}), entered: make(chan struct{}, 10), panicMany: true}
	q := f.queue(1)
	out := writeFirst(q, f)
	rest := startCreates(t, context.Background(), q, "b", "c")
	close(f.hold)
	collectOutcomes(t, out, 1)
	for n, o := range collectOutcomes(t, rest, 2) {
		if o.err == nil || !strings.Contains(o.err.Error(), "panic") {
			t.Errorf("call %s of the panicking batch: err %v, want an error naming the panic", n, o.err)
		}
	}
	f.mu.Lock()
	f.panicMany = false
	f.mu.Unlock()
	waitIdle(t, q)
	if task, err := q.create(context.Background(), orchestration.CreateTaskParams{Reason: "d"}); err != nil || task.UUID != "task-d" {
		t.Fatalf("after the panic: task %v, err %v", task, err)
	}
}

// TestCreateQueueUnderLoad: many concurrent calls, some refused, some
// cancelled while they wait or while their batch is written: every call
// returns, each with its own task or its own error, and the queue ends
// empty and still working.
func TestCreateQueueUnderLoad(t *testing.T) {
	refuse := map[string]error{}
	for i := 0; i < 600; i += 7 {
		refuse[fmt.Sprint(i)] = fmt.Errorf("request %d: %w", i, ErrInvalidContext)
	}
	f := &fakeCreates{refuse: refuse, pause: 200 * time.Microsecond}
	q := f.queue(2)
	var wg sync.WaitGroup
	for i := range 600 {
		wg.Go(func() {
			name := fmt.Sprint(i)
			ctx := context.Background()
			if i%5 == 0 {
				c, cancel := context.WithTimeout(ctx, time.Duration(i%400)*time.Microsecond)
				defer cancel()
				ctx = c
			}
			task, err := q.create(ctx, orchestration.CreateTaskParams{Reason: name})
			switch {
			case err == nil && task.UUID == "task-"+name:
			case err != nil && refuse[name] != nil && errors.Is(err, ErrInvalidContext):
			case err != nil && ctx.Err() != nil:
			default:
				t.Errorf("call %s: task %v, err %v", name, task, err)
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("calls still waiting after 20s")
	}
	waitIdle(t, q)
	if len(f.batches) == 0 {
		t.Error("no call shared a transaction; want batches under this load")
	}
	if task, err := q.create(context.Background(), orchestration.CreateTaskParams{Reason: "after"}); err != nil || task.UUID != "task-after" {
		t.Fatalf("after the load: task %v, err %v", task, err)
	}
}
