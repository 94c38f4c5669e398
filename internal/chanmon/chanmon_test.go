package chanmon_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tasker-go/tasker/internal/chanmon"
)

// Tests that need goroutines to be blocked run in a synctest bubble:
// synctest.Wait returns once every goroutine is blocked, so no test guesses
// with sleeps, time is virtual (exact and instant), and a goroutine left
// blocked at the end fails the test instead of leaking.

func TestNewRejectsCapacityBelowOne(t *testing.T) {
	t.Parallel()
	for _, capacity := range []int{0, -1} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("New with capacity %d did not panic", capacity)
				}
			}()
			chanmon.New[int]("bad", capacity)
		}()
	}
}

func TestSendsAndReceivesAreCounted(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	c := chanmon.New[int]("work", 4)
	if c.Name() != "work" || c.Cap() != 4 {
		t.Fatalf("Name, Cap = %q, %d; want work, 4", c.Name(), c.Cap())
	}
	for i := range 3 {
		if err := c.Send(ctx, i); err != nil {
			t.Fatalf("Send(%d): %v", i, err)
		}
	}
	if !c.TrySend(3) {
		t.Fatal("TrySend on a channel with room returned false")
	}
	if c.TrySend(4) {
		t.Fatal("TrySend on a full channel returned true")
	}
	s := c.Stats()
	want := chanmon.Stats{
		Name: "work", Capacity: 4, Depth: 4, Saturation: 1, Sent: 4, Dropped: 1,
		MaxDepth: 4, Level: chanmon.Critical,
	}
	if s != want {
		t.Fatalf("Stats = %+v\nwant    %+v", s, want)
	}
	if c.Len() != 4 {
		t.Errorf("Len = %d, want 4", c.Len())
	}

	// Receiving through the raw channel and through Receive both count.
	if v := <-c.Recv(); v != 0 {
		t.Errorf("first item %d, want 0", v)
	}
	select {
	case v := <-c.Recv():
		if v != 1 {
			t.Errorf("second item %d, want 1", v)
		}
	default:
		t.Fatal("no second item")
	}
	v, ok, err := c.Receive(ctx)
	if v != 2 || !ok || err != nil {
		t.Errorf("Receive = %d, %v, %v; want 2, true, nil", v, ok, err)
	}
	s = c.Stats()
	if s.Sent != 4 || s.Received != 3 || s.Depth != 1 || s.MaxDepth != 4 {
		t.Errorf("after 3 receives: Sent=%d Received=%d Depth=%d MaxDepth=%d; want 4 3 1 4",
			s.Sent, s.Received, s.Depth, s.MaxDepth)
	}
	if s.BlockedSends != 0 || s.BlockedTime != 0 {
		t.Errorf("BlockedSends=%d BlockedTime=%v without any wait", s.BlockedSends, s.BlockedTime)
	}
}

func TestFullChannelBlocksSendUntilReceive(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		c := chanmon.New[string]("completion", 1)
		if err := c.Send(t.Context(), "first"); err != nil {
			t.Fatal(err)
		}
		result := make(chan error, 1)
		go func() { result <- c.Send(t.Context(), "second") }()

		synctest.Wait()
		select {
		case err := <-result:
			t.Fatalf("Send on a full channel returned %v without waiting", err)
		default:
		}
		if s := c.Stats(); s.BlockedSends != 1 || s.Sent != 1 {
			t.Fatalf("while blocked: BlockedSends=%d Sent=%d, want 1 1", s.BlockedSends, s.Sent)
		}

		const wait = 3 * time.Second
		time.Sleep(wait)
		if v := <-c.Recv(); v != "first" {
			t.Fatalf("received %q, want first", v)
		}
		if err := <-result; err != nil {
			t.Fatalf("blocked Send: %v", err)
		}
		if v := <-c.Recv(); v != "second" {
			t.Fatalf("received %q, want second", v)
		}
		s := c.Stats()
		if s.BlockedSends != 1 || s.BlockedTime < wait {
			t.Errorf("BlockedSends=%d BlockedTime=%v, want 1 and at least %v", s.BlockedSends, s.BlockedTime, wait)
		}
		if s.Sent != 2 || s.Received != 2 || s.Depth != 0 {
			t.Errorf("Sent=%d Received=%d Depth=%d, want 2 2 0", s.Sent, s.Received, s.Depth)
		}
	})
}

func TestSendReturnsCauseWhenContextEnds(t *testing.T) {
	t.Parallel()
	errShutdown := errors.New("worker shutting down")
	tests := []struct {
		name    string
		ctx     func(context.Context) (context.Context, func())
		wantErr error
	}{
		{
			name: "cancelled with cause",
			ctx: func(parent context.Context) (context.Context, func()) {
				ctx, cancel := context.WithCancelCause(parent)
				return ctx, func() { cancel(errShutdown) }
			},
			wantErr: errShutdown,
		},
		{
			name: "plain cancel",
			ctx: func(parent context.Context) (context.Context, func()) {
				return context.WithCancel(parent)
			},
			wantErr: context.Canceled,
		},
		{
			name: "deadline",
			ctx: func(parent context.Context) (context.Context, func()) {
				ctx, cancel := context.WithTimeout(parent, time.Minute)
				return ctx, func() {
					time.Sleep(2 * time.Minute)
					cancel()
				}
			},
			wantErr: context.DeadlineExceeded,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				c := chanmon.New[int]("dispatch", 1)
				if err := c.Send(t.Context(), 1); err != nil {
					t.Fatal(err)
				}
				ctx, end := tt.ctx(t.Context())
				result := make(chan error, 1)
				go func() { result <- c.Send(ctx, 2) }()
				synctest.Wait()
				end()
				err := <-result
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Send = %v, want %v", err, tt.wantErr)
				}
				s := c.Stats()
				if s.Sent != 1 || s.Depth != 1 || s.BlockedSends != 1 {
					t.Errorf("Sent=%d Depth=%d BlockedSends=%d, want 1 1 1", s.Sent, s.Depth, s.BlockedSends)
				}
			})
		})
	}
}

func TestSendWithEndedContext(t *testing.T) {
	t.Parallel()
	c := chanmon.New[int]("dispatch", 1)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	// With room, the send completes at once; the context only bounds waiting.
	if err := c.Send(ctx, 1); err != nil {
		t.Fatalf("Send with room = %v, want nil", err)
	}
	if err := c.Send(ctx, 2); !errors.Is(err, context.Canceled) {
		t.Fatalf("Send on a full channel = %v, want context.Canceled", err)
	}
	if s := c.Stats(); s.Sent != 1 || s.Depth != 1 {
		t.Errorf("Sent=%d Depth=%d, want 1 1", s.Sent, s.Depth)
	}
}

func TestSendAfterCloseFails(t *testing.T) {
	t.Parallel()
	c := chanmon.New[int]("events", 2)
	c.Close()
	c.Close() // idempotent
	if err := c.Send(t.Context(), 1); !errors.Is(err, chanmon.ErrClosed) {
		t.Errorf("Send after Close = %v, want ErrClosed", err)
	}
	if c.TrySend(1) {
		t.Error("TrySend after Close returned true")
	}
	if s := c.Stats(); s.Sent != 0 || s.Dropped != 0 {
		t.Errorf("Sent=%d Dropped=%d after sends on a closed channel, want 0 0", s.Sent, s.Dropped)
	}
	if _, ok := <-c.Recv(); ok {
		t.Error("receive on a closed, empty channel returned an item")
	}
}

func TestBufferedItemsSurviveClose(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	c := chanmon.New[int]("completion", 5)
	for i := range 3 {
		if err := c.Send(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	if got := c.Stats().Depth; got != 3 {
		t.Errorf("Depth after Close = %d, want 3", got)
	}
	var got []int
	for v := range c.Recv() {
		got = append(got, v)
	}
	if fmt.Sprint(got) != "[0 1 2]" {
		t.Errorf("drained %v, want [0 1 2]", got)
	}
	if v, ok, err := c.Receive(ctx); v != 0 || ok || err != nil {
		t.Errorf("Receive on drained closed channel = %d, %v, %v; want 0, false, nil", v, ok, err)
	}
	if s := c.Stats(); s.Sent != 3 || s.Received != 3 || s.Depth != 0 {
		t.Errorf("Sent=%d Received=%d Depth=%d, want 3 3 0", s.Sent, s.Received, s.Depth)
	}
}

func TestReceiveReturnsCauseWhenContextEnds(t *testing.T) {
	t.Parallel()
	c := chanmon.New[int]("idle", 1)
	errStop := errors.New("stop")
	ctx, cancel := context.WithCancelCause(t.Context())
	cancel(errStop)
	if v, ok, err := c.Receive(ctx); v != 0 || ok || !errors.Is(err, errStop) {
		t.Errorf("Receive = %d, %v, %v; want 0, false, %v", v, ok, err, errStop)
	}
}

func TestCloseReleasesBlockedSenders(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const senders = 100
		c := chanmon.New[int]("completion", 1)
		if err := c.Send(t.Context(), -1); err != nil {
			t.Fatal(err)
		}
		errs := make(chan error, senders)
		for i := range senders {
			go func() { errs <- c.Send(t.Context(), i) }()
		}
		synctest.Wait()
		if got := c.Stats().BlockedSends; got != senders {
			t.Fatalf("BlockedSends = %d, want %d", got, senders)
		}

		c.Close()
		// Every sender must return; one that stayed blocked would make the
		// bubble deadlock and fail the test.
		for range senders {
			if err := <-errs; !errors.Is(err, chanmon.ErrClosed) {
				t.Errorf("blocked Send after Close = %v, want ErrClosed", err)
			}
		}
		if v, ok := <-c.Recv(); v != -1 || !ok {
			t.Errorf("buffered item = %d, %v; want -1, true", v, ok)
		}
		if _, ok := <-c.Recv(); ok {
			t.Error("channel still open after draining")
		}
		if s := c.Stats(); s.Sent != 1 || s.Received != 1 {
			t.Errorf("Sent=%d Received=%d, want 1 1", s.Sent, s.Received)
		}
	})
}

// TestCloseRacesSendersAndReceivers closes a channel in the middle of real
// concurrent traffic. Run with -race, it checks that nothing panics, every
// sender returns, and no accepted item is lost or counted twice.
func TestCloseRacesSendersAndReceivers(t *testing.T) {
	t.Parallel()
	const (
		senders = 100
		perSend = 50
	)
	ctx := t.Context()
	c := chanmon.New[int]("race", 8)

	received := make(chan int, 1)
	go func() {
		n := 0
		for range c.Recv() {
			n++
		}
		received <- n
	}()

	var wg sync.WaitGroup
	accepted := make([]int, senders)
	for i := range senders {
		wg.Go(func() {
			for j := range perSend {
				var err error
				if j%2 == 0 {
					err = c.Send(ctx, j)
				} else if !c.TrySend(j) {
					continue
				}
				switch {
				case err == nil:
					accepted[i]++
				case errors.Is(err, chanmon.ErrClosed):
					return
				default:
					t.Errorf("Send: %v", err)
					return
				}
			}
		})
	}
	// Close once some traffic has gone through, while senders are still busy.
	for c.Stats().Received < senders {
		select {
		case <-ctx.Done():
			t.Fatal("test context ended before traffic started")
		default:
			runtime.Gosched()
		}
	}
	c.Close()

	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(time.Minute):
		t.Fatal("senders still blocked a minute after Close")
	}

	total := 0
	for _, n := range accepted {
		total += n
	}
	var got int
	select {
	case got = <-received:
	case <-time.After(time.Minute):
		t.Fatal("receiver did not see the channel closed")
	}
	s := c.Stats()
	if got != total || s.Sent != uint64(total) || s.Received != uint64(total) || s.Depth != 0 {
		t.Errorf("accepted %d, received %d, Stats Sent=%d Received=%d Depth=%d; want all equal, depth 0",
			total, got, s.Sent, s.Received, s.Depth)
	}
	if err := c.Send(ctx, 0); !errors.Is(err, chanmon.ErrClosed) {
		t.Errorf("Send after Close = %v, want ErrClosed", err)
	}
}

func TestConcurrentCloseCalls(t *testing.T) {
	t.Parallel()
	c := chanmon.New[int]("close", 1)
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			c.Close()
			// Close returns only once the channel is closed, whoever closed it.
			if err := c.Send(t.Context(), 1); !errors.Is(err, chanmon.ErrClosed) {
				t.Errorf("Send after Close = %v, want ErrClosed", err)
			}
		})
	}
	wg.Wait()
}

func TestSaturationAndLevel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		depth              int
		degraded, critical float64 // 0: keep the defaults
		want               chanmon.Level
	}{
		{0, 0, 0, chanmon.Healthy},
		{6, 0, 0, chanmon.Healthy},
		{7, 0, 0, chanmon.Degraded},
		{8, 0, 0, chanmon.Degraded},
		{9, 0, 0, chanmon.Critical},
		{10, 0, 0, chanmon.Critical},
		{4, 0.5, 0.8, chanmon.Healthy},
		{5, 0.5, 0.8, chanmon.Degraded},
		{8, 0.5, 0.8, chanmon.Critical},
		{9, 1, 1, chanmon.Healthy},
		{10, 1, 1, chanmon.Critical},
		{3, 0.3, 0.3, chanmon.Critical},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("depth%d_%v_%v", tt.depth, tt.degraded, tt.critical), func(t *testing.T) {
			t.Parallel()
			c := chanmon.New[int]("level", 10)
			if tt.degraded != 0 {
				if err := c.SetThresholds(tt.degraded, tt.critical); err != nil {
					t.Fatal(err)
				}
			}
			for i := range tt.depth {
				c.TrySend(i)
			}
			s := c.Stats()
			if want := float64(tt.depth) / 10; s.Saturation != want {
				t.Errorf("Saturation = %v, want %v", s.Saturation, want)
			}
			if s.Level != tt.want {
				t.Errorf("Level = %v, want %v", s.Level, tt.want)
			}
		})
	}
}

func TestSetThresholdsRejectsInvalidValues(t *testing.T) {
	t.Parallel()
	c := chanmon.New[int]("level", 10)
	for range 8 {
		c.TrySend(0)
	}
	for _, th := range [][2]float64{{0, 0.9}, {0.7, 0}, {0.9, 0.7}, {0.5, 1.5}, {-0.1, 0.5}, {nan(), 0.9}} {
		if err := c.SetThresholds(th[0], th[1]); err == nil {
			t.Errorf("SetThresholds(%v, %v) accepted", th[0], th[1])
		}
		if err := chanmon.ValidateThresholds(th[0], th[1]); err == nil {
			t.Errorf("ValidateThresholds(%v, %v) accepted", th[0], th[1])
		}
	}
	// The defaults still apply: 0.8 is degraded.
	if got := c.Stats().Level; got != chanmon.Degraded {
		t.Errorf("Level after rejected thresholds = %v, want degraded", got)
	}
}

func nan() float64 {
	zero := 0.0
	return zero / zero
}

func TestLevelString(t *testing.T) {
	t.Parallel()
	for l, want := range map[chanmon.Level]string{
		chanmon.Healthy: "healthy", chanmon.Degraded: "degraded", chanmon.Critical: "critical",
		chanmon.Level(7): "Level(7)",
	} {
		if got := l.String(); got != want {
			t.Errorf("Level(%d).String() = %q, want %q", int(l), got, want)
		}
	}
}

func TestRegistrySnapshot(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	r := chanmon.NewRegistry()
	if got := r.Snapshot(); len(got) != 0 {
		t.Fatalf("empty registry Snapshot = %v", got)
	}
	completion := chanmon.New[string]("worker.completion", 4)
	dispatch := chanmon.New[int]("worker.dispatch", 2)
	results := chanmon.New[struct{}]("orchestration.results", 10)
	for _, m := range []chanmon.Monitor{completion, dispatch, results} {
		if err := r.Register(m); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Register(chanmon.New[int]("worker.dispatch", 1)); !errors.Is(err, chanmon.ErrDuplicateName) {
		t.Errorf("Register of a taken name = %v, want ErrDuplicateName", err)
	}

	if err := completion.Send(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	dispatch.TrySend(1)
	dispatch.TrySend(2)
	dispatch.TrySend(3)

	snap := r.Snapshot()
	var names []string
	for _, s := range snap {
		names = append(names, s.Name)
	}
	if want := "[orchestration.results worker.completion worker.dispatch]"; fmt.Sprint(names) != want {
		t.Fatalf("Snapshot names = %v, want %s", names, want)
	}
	if s := snap[1]; s.Sent != 1 || s.Depth != 1 || s.Capacity != 4 || s.Level != chanmon.Healthy {
		t.Errorf("completion stats = %+v", s)
	}
	if s := snap[2]; s.Sent != 2 || s.Dropped != 1 || s.Saturation != 1 || s.Level != chanmon.Critical {
		t.Errorf("dispatch stats = %+v", s)
	}

	r.Unregister("worker.dispatch")
	if got := len(r.Snapshot()); got != 2 {
		t.Errorf("Snapshot after Unregister has %d entries, want 2", got)
	}
	if err := r.Register(chanmon.New[int]("worker.dispatch", 1)); err != nil {
		t.Errorf("Register after Unregister: %v", err)
	}
}

func TestRegistryConcurrentUse(t *testing.T) {
	t.Parallel()
	r := chanmon.NewRegistry()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			c := chanmon.New[int](fmt.Sprintf("ch%d", i), 4)
			if err := r.Register(c); err != nil {
				t.Error(err)
				return
			}
			for j := range 100 {
				if c.TrySend(j) {
					<-c.Recv()
				}
				r.Snapshot()
			}
		})
	}
	wg.Wait()
	for _, s := range r.Snapshot() {
		if s.Sent != 100 || s.Received != 100 {
			t.Errorf("%s: Sent=%d Received=%d, want 100 100", s.Name, s.Sent, s.Received)
		}
	}
}

func TestSendDoesNotAllocate(t *testing.T) {
	ctx := context.Background()
	c := chanmon.New[int]("alloc", 1)
	if n := testing.AllocsPerRun(1000, func() {
		if err := c.Send(ctx, 1); err != nil {
			t.Fatal(err)
		}
		<-c.Recv()
		c.TrySend(2)
		<-c.Recv()
	}); n != 0 {
		t.Errorf("Send and TrySend allocate %v times per call pair, want 0", n)
	}
}

func BenchmarkSend(b *testing.B) {
	ctx := context.Background()
	b.Run("uncontended", func(b *testing.B) {
		c := chanmon.New[int]("bench", 64)
		b.ReportAllocs()
		for b.Loop() {
			if err := c.Send(ctx, 1); err != nil {
				b.Fatal(err)
			}
			<-c.Recv()
		}
	})
	b.Run("parallel", func(b *testing.B) {
		c := chanmon.New[int]("bench", 1024)
		drained := make(chan struct{})
		go func() {
			for range c.Recv() {
			}
			close(drained)
		}()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := c.Send(ctx, 1); err != nil {
					b.Error(err)
					return
				}
			}
		})
		c.Close()
		<-drained
	})
}
