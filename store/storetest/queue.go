package storetest

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/tasker-go/tasker/store"
)

// queueFixture is a task with steps, so that messages point at real rows
// (a driver may enforce that).
type queueFixture struct {
	s     *suite
	task  string
	steps []string
}

func newQueueFixture(s *suite, steps int) *queueFixture {
	task := s.newTask(store.TaskInsertParams{})
	names := make([]string, steps)
	for i := range names {
		names[i] = "s" + strconv.Itoa(i)
	}
	return &queueFixture{s: s, task: task, steps: s.newSteps(task, "ns", names...)}
}

// msg is a message for step i (-1: no step) whose payload carries n, so
// tests can tell messages apart without knowing their IDs.
func (f *queueFixture) msg(queue string, n, step, priority int, visibleAt time.Time) store.QueueMessageInsert {
	m := store.QueueMessageInsert{
		Queue: queue, TaskUUID: f.task, Priority: priority, VisibleAt: visibleAt,
		Payload: json.RawMessage(fmt.Sprintf(`{"n": %d}`, n)),
	}
	if step >= 0 {
		m.StepUUID = f.steps[step]
	}
	return m
}

func (f *queueFixture) send(now time.Time, msgs ...store.QueueMessageInsert) {
	f.s.t.Helper()
	f.s.tx(func(tx store.Tx) error { return tx.QueueSend(f.s.ctx, store.QueueSendParams{Messages: msgs, Now: now}) })
}

func (f *queueFixture) claim(p store.QueueClaimParams) []store.QueueMessage {
	f.s.t.Helper()
	var out []store.QueueMessage
	f.s.tx(func(tx store.Tx) error {
		var err error
		out, err = tx.QueueClaim(f.s.ctx, p)
		return err
	})
	return out
}

// ns returns the payload numbers of msgs, in order.
func (f *queueFixture) ns(msgs []store.QueueMessage) []int {
	f.s.t.Helper()
	out := make([]int, len(msgs))
	for i, m := range msgs {
		var p struct{ N int }
		if err := json.Unmarshal(m.Payload, &p); err != nil {
			f.s.t.Fatalf("message %d payload %q: %v", m.ID, m.Payload, err)
		}
		out[i] = p.N
	}
	return out
}

func (f *queueFixture) wantNs(what string, msgs []store.QueueMessage, want ...int) {
	f.s.t.Helper()
	got := f.ns(msgs)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		f.s.t.Errorf("%s: messages %v, want %v", what, got, want)
	}
}

func testQueueClaimOrder(s *suite) {
	f := newQueueFixture(s, 6)
	const q = "worker_ns"
	f.send(t0,
		f.msg(q, 1, 0, 0, time.Time{}),
		f.msg(q, 2, 1, 5, time.Time{}),
		f.msg(q, 3, 2, 0, time.Time{}),
		f.msg(q, 4, 3, 5, time.Time{}),
		f.msg(q, 5, 4, -1, time.Time{}),
		f.msg("other", 6, 5, 100, time.Time{}),
	)
	f.send(at(time.Second), f.msg(q, 7, -1, 5, time.Time{}))

	claim := func(queues []string, limit int, owner string) []store.QueueMessage {
		return f.claim(store.QueueClaimParams{Queues: queues, Limit: limit, Lease: 30 * time.Second, Owner: owner, Now: at(2 * time.Second)})
	}
	first := claim([]string{q}, 3, "w1")
	f.wantNs("first claim (priority desc, then oldest)", first, 2, 4, 7)

	tokens := map[string]bool{}
	for _, m := range first {
		if m.Queue != q || m.TaskUUID != f.task || m.LeaseOwner != "w1" || m.ReadCount != 1 || m.ID == 0 {
			s.t.Errorf("claimed message = %+v", m)
		}
		if m.LeaseToken == "" || tokens[m.LeaseToken] {
			s.t.Errorf("message %d lease token %q: want a fresh, unique token", m.ID, m.LeaseToken)
		}
		tokens[m.LeaseToken] = true
		s.wantTimePtr("LeaseUntil", m.LeaseUntil, ptr(at(32*time.Second)))
	}
	if len(first) == 3 {
		if first[0].StepUUID != f.steps[1] || first[2].StepUUID != "" {
			s.t.Errorf("StepUUIDs = %q, %q; want %q and none", first[0].StepUUID, first[2].StepUUID, f.steps[1])
		}
		s.wantTime("EnqueuedAt", first[0].EnqueuedAt, t0)
		s.wantTime("EnqueuedAt", first[2].EnqueuedAt, at(time.Second))
	}

	f.wantNs("second claim takes the rest", claim([]string{q}, 10, "w2"), 1, 3, 5)
	f.wantNs("leased messages are not claimable", claim([]string{q}, 10, "w3"))
	f.wantNs("claim across queues", claim([]string{q, "other"}, 10, "w3"), 6)
	f.wantNs("nothing left", claim([]string{q, "other"}, 10, "w3"))
}

func testQueueVisibility(s *suite) {
	f := newQueueFixture(s, 2)
	f.send(t0,
		f.msg("q", 1, 0, 10, at(time.Minute)), // delayed, even though of higher priority
		f.msg("q", 2, 1, 0, time.Time{}),      // zero VisibleAt: visible at once
	)
	claim := func(now time.Time) []store.QueueMessage {
		return f.claim(store.QueueClaimParams{Queues: []string{"q"}, Limit: 10, Lease: time.Hour, Owner: "w", Now: now})
	}
	f.wantNs("claim at send time", claim(t0), 2)
	f.wantNs("claim before the delayed message is visible", claim(at(59*time.Second)))
	f.wantNs("claim when it becomes visible", claim(at(time.Minute)), 1)
}

func testQueueExpiredLeaseReclaim(s *suite) {
	f := newQueueFixture(s, 1)
	f.send(t0, f.msg("q", 1, 0, 0, time.Time{}))
	claim := func(now time.Time, owner string, includeExpired bool) []store.QueueMessage {
		return f.claim(store.QueueClaimParams{Queues: []string{"q"}, Limit: 10, Lease: 10 * time.Second, Owner: owner, IncludeExpired: includeExpired, Now: now})
	}
	first := claim(t0, "w1", false)
	if len(first) != 1 {
		s.t.Fatalf("claimed %d messages, want 1", len(first))
	}
	f.wantNs("IncludeExpired while the lease holds", claim(at(5*time.Second), "w2", true))
	f.wantNs("expired lease without IncludeExpired", claim(at(20*time.Second), "w2", false))

	again := claim(at(20*time.Second), "w2", true)
	if len(again) != 1 {
		s.t.Fatalf("re-claim of an expired lease returned %d messages, want 1", len(again))
	}
	m := again[0]
	if m.ID != first[0].ID || m.LeaseOwner != "w2" || m.ReadCount != 2 {
		s.t.Errorf("re-claimed message = %+v; want the same message, owner w2, read count 2", m)
	}
	if m.LeaseToken == "" || m.LeaseToken == first[0].LeaseToken {
		s.t.Errorf("re-claimed lease token %q, want a new one (old %q)", m.LeaseToken, first[0].LeaseToken)
	}
	s.wantTimePtr("LeaseUntil", m.LeaseUntil, ptr(at(30*time.Second)))

	// The first consumer's lease is gone.
	err := s.try(func(tx store.Tx) error {
		return tx.QueueExtend(s.ctx, store.QueueExtendParams{ID: m.ID, Token: first[0].LeaseToken, Lease: time.Minute, Now: at(21 * time.Second)})
	})
	s.wantErr("extend with the superseded token", err, store.ErrLeaseLost)
	err = s.try(func(tx store.Tx) error {
		return tx.QueueDelete(s.ctx, store.QueueDeleteParams{ID: m.ID, Token: first[0].LeaseToken})
	})
	s.wantErr("delete with the superseded token", err, store.ErrLeaseLost)
	s.wantDepth("q", at(21*time.Second), 0, 1)

	s.tx(func(tx store.Tx) error {
		return tx.QueueDelete(s.ctx, store.QueueDeleteParams{ID: m.ID, Token: m.LeaseToken})
	})
	s.wantDepth("q", at(21*time.Second), 0, 0)
}

func testQueueExtend(s *suite) {
	f := newQueueFixture(s, 1)
	f.send(t0, f.msg("q", 1, 0, 0, time.Time{}))
	m := f.claim(store.QueueClaimParams{Queues: []string{"q"}, Limit: 1, Lease: 10 * time.Second, Owner: "w", Now: t0})
	if len(m) != 1 {
		s.t.Fatalf("claimed %d messages, want 1", len(m))
	}
	id, token := m[0].ID, m[0].LeaseToken

	s.tx(func(tx store.Tx) error {
		return tx.QueueExtend(s.ctx, store.QueueExtendParams{ID: id, Token: token, Lease: 30 * time.Second, Now: at(5 * time.Second)})
	})
	expired := func(now time.Time) []store.QueueMessage {
		out, err := s.r().QueueExpired(s.ctx, store.QueueExpiredParams{Now: now, Limit: 10})
		if err != nil {
			s.t.Fatalf("QueueExpired: %v", err)
		}
		return out
	}
	f.wantNs("expired after the original lease, before the extended one", expired(at(20*time.Second)))
	f.wantNs("IncludeExpired claim within the extended lease",
		f.claim(store.QueueClaimParams{Queues: []string{"q"}, Limit: 1, Lease: time.Second, Owner: "w2", IncludeExpired: true, Now: at(20 * time.Second)}),
	)
	late := expired(at(40 * time.Second))
	f.wantNs("expired after the extended lease", late, 1)
	if len(late) == 1 {
		s.wantTimePtr("extended LeaseUntil", late[0].LeaseUntil, ptr(at(35*time.Second)))
		if late[0].LeaseToken != token {
			s.t.Errorf("extend changed the lease token")
		}
	}

	err := s.try(func(tx store.Tx) error {
		return tx.QueueExtend(s.ctx, store.QueueExtendParams{ID: id, Token: "not-the-token", Lease: time.Hour, Now: at(6 * time.Second)})
	})
	s.wantErr("extend with a wrong token", err, store.ErrLeaseLost)
	err = s.try(func(tx store.Tx) error {
		return tx.QueueExtend(s.ctx, store.QueueExtendParams{ID: id + 1000, Token: token, Lease: time.Hour, Now: at(6 * time.Second)})
	})
	s.wantErr("extend a message that does not exist", err, store.ErrLeaseLost)
}

func testQueueDelete(s *suite) {
	f := newQueueFixture(s, 4)
	f.send(t0, f.msg("q", 1, 0, 0, time.Time{}), f.msg("q", 2, 1, 0, time.Time{}), f.msg("q", 3, 2, 0, time.Time{}))
	// Deletes address messages by ID; a message in another queue is never hit.
	f.send(t0, f.msg("idle", 4, 3, 0, time.Time{}))
	leased := f.claim(store.QueueClaimParams{Queues: []string{"q"}, Limit: 3, Lease: time.Hour, Owner: "w", Now: t0})
	if len(leased) != 3 {
		s.t.Fatalf("claimed %d messages, want 3", len(leased))
	}
	del := func(p store.QueueDeleteParams) error {
		return s.try(func(tx store.Tx) error { return tx.QueueDelete(s.ctx, p) })
	}

	s.wantErr("delete with the lease token", del(store.QueueDeleteParams{ID: leased[0].ID, Token: leased[0].LeaseToken}), nil)
	s.wantDepth("q", t0, 0, 2)

	s.wantErr("delete with a wrong token", del(store.QueueDeleteParams{ID: leased[1].ID, Token: leased[2].LeaseToken}), store.ErrLeaseLost)
	s.wantDepth("q", t0, 0, 2)

	s.wantErr("delete a leased message without a token", del(store.QueueDeleteParams{ID: leased[1].ID}), nil)
	s.wantDepth("q", t0, 0, 1)

	s.wantErr("delete with a token of a removed message", del(store.QueueDeleteParams{ID: leased[0].ID, Token: leased[0].LeaseToken}), store.ErrLeaseLost)
	s.wantErr("delete a removed message without a token", del(store.QueueDeleteParams{ID: leased[0].ID}), nil)

	// A rescuer deletes only a lease that is still expired: leased[2]'s lease
	// runs to t0+1h, so a delete guarded at t0+30m is refused and one
	// guarded at t0+2h would succeed.
	s.wantErr("delete guarded by expiry while the lease is live",
		del(store.QueueDeleteParams{ID: leased[2].ID, Token: leased[2].LeaseToken, ExpiredBefore: at(30 * time.Minute)}), store.ErrLeaseLost)
	s.wantDepth("q", t0, 0, 1)

	rest, err := s.r().QueueExpired(s.ctx, store.QueueExpiredParams{Queues: []string{"q"}, Now: at(2 * time.Hour), Limit: 10})
	if err != nil || len(rest) != 1 || rest[0].ID != leased[2].ID {
		s.t.Fatalf("the one remaining leased message: %+v, %v", rest, err)
	}
	s.wantDepth("idle", t0, 1, 0)
	s.wantDepth("q", t0, 0, 1)
	s.wantErr("delete guarded by expiry after the lease ran out",
		del(store.QueueDeleteParams{ID: leased[2].ID, Token: leased[2].LeaseToken, ExpiredBefore: at(2 * time.Hour)}), nil)
	s.wantDepth("q", t0, 0, 0)
}

func testQueueDeleteForSteps(s *suite) {
	f := newQueueFixture(s, 4)
	f.send(t0,
		f.msg("q", 1, 0, 0, time.Time{}),
		f.msg("q", 2, 0, 0, time.Time{}),
		f.msg("q", 3, 1, 0, time.Time{}),
		f.msg("q", 4, 2, 0, time.Time{}),
		f.msg("q", 5, -1, 0, time.Time{}),
		f.msg("other", 6, 1, 0, time.Time{}),
	)
	// A leased message goes too: the work it stands for no longer exists.
	if m := f.claim(store.QueueClaimParams{Queues: []string{"q"}, Limit: 1, Lease: time.Hour, Owner: "w", Now: t0}); len(m) != 1 {
		s.t.Fatalf("claimed %d messages, want 1", len(m))
	}

	var n int
	s.tx(func(tx store.Tx) error {
		var err error
		n, err = tx.QueueDeleteForSteps(s.ctx, store.QueueDeleteForStepsParams{StepUUIDs: []string{f.steps[0], f.steps[1], f.steps[3]}})
		return err
	})
	if n != 4 {
		s.t.Errorf("QueueDeleteForSteps removed %d messages, want 4", n)
	}
	f.wantNs("left in q", f.claim(store.QueueClaimParams{Queues: []string{"q", "other"}, Limit: 10, Lease: time.Hour, Owner: "w", Now: t0}), 4, 5)

	s.tx(func(tx store.Tx) error {
		var err error
		n, err = tx.QueueDeleteForSteps(s.ctx, store.QueueDeleteForStepsParams{})
		return err
	})
	if n != 0 {
		s.t.Errorf("QueueDeleteForSteps with no steps removed %d messages", n)
	}
	s.wantDepth("q", t0, 0, 2)
}

func testQueueExpired(s *suite) {
	f := newQueueFixture(s, 4)
	f.send(t0, f.msg("b", 4, 3, 0, time.Time{}))
	f.send(at(time.Second), f.msg("a", 1, 0, 0, time.Time{}))
	f.send(at(2*time.Second), f.msg("a", 2, 1, 0, time.Time{}), f.msg("a", 3, 2, 0, time.Time{}))
	lease := func(q string, d time.Duration) {
		if m := f.claim(store.QueueClaimParams{Queues: []string{q}, Limit: 1, Lease: d, Owner: "w-" + q, Now: at(2 * time.Second)}); len(m) != 1 {
			s.t.Fatalf("claimed %d messages from %s, want 1", len(m), q)
		}
	}
	lease("b", 5*time.Second)  // message 4, until t0+7s
	lease("a", 10*time.Second) // message 1, until t0+12s
	lease("a", 20*time.Second) // message 2, until t0+22s; message 3 stays unleased

	expired := func(p store.QueueExpiredParams) []store.QueueMessage {
		out, err := s.r().QueueExpired(s.ctx, p)
		if err != nil {
			s.t.Fatalf("QueueExpired %+v: %v", p, err)
		}
		return out
	}
	all := expired(store.QueueExpiredParams{Now: at(15 * time.Second), Limit: 10})
	f.wantNs("expired at t0+15s, oldest first", all, 4, 1)
	if len(all) == 2 {
		m := all[1]
		if m.Queue != "a" || m.LeaseOwner != "w-a" || m.LeaseToken == "" || m.StepUUID != f.steps[0] || m.TaskUUID != f.task {
			s.t.Errorf("expired message = %+v", m)
		}
		s.wantTimePtr("LeaseUntil", m.LeaseUntil, ptr(at(12*time.Second)))
	}
	f.wantNs("queue filter a", expired(store.QueueExpiredParams{Queues: []string{"a"}, Now: at(15 * time.Second), Limit: 10}), 1)
	f.wantNs("queue filter b", expired(store.QueueExpiredParams{Queues: []string{"b"}, Now: at(15 * time.Second), Limit: 10}), 4)
	f.wantNs("queue filter without match", expired(store.QueueExpiredParams{Queues: []string{"c"}, Now: at(time.Hour), Limit: 10}))
	f.wantNs("limit", expired(store.QueueExpiredParams{Now: at(15 * time.Second), Limit: 1}), 4)
	f.wantNs("before any lease expired", expired(store.QueueExpiredParams{Now: at(6 * time.Second), Limit: 10}))
	f.wantNs("after all leases expired", expired(store.QueueExpiredParams{Now: at(time.Hour), Limit: 10}), 4, 1, 2)
}

func testQueueDepth(s *suite) {
	f := newQueueFixture(s, 4)
	f.send(t0, f.msg("a", 1, 0, 0, time.Time{}))
	f.send(at(time.Second), f.msg("a", 2, 1, 0, time.Time{}))
	f.send(at(2*time.Second), f.msg("a", 3, 2, 0, time.Time{}))
	f.send(at(5*time.Second), f.msg("b", 4, 3, 0, time.Time{}))
	if m := f.claim(store.QueueClaimParams{Queues: []string{"a"}, Limit: 1, Lease: time.Hour, Owner: "w", Now: at(3 * time.Second)}); len(m) != 1 {
		s.t.Fatalf("claimed %d messages, want 1", len(m))
	}

	rows, err := s.r().QueueDepth(s.ctx, store.QueueDepthParams{Now: at(10 * time.Second)})
	if err != nil {
		s.t.Fatalf("QueueDepth: %v", err)
	}
	got := map[string]store.QueueDepthRow{}
	for _, r := range rows {
		if _, dup := got[r.Queue]; dup {
			s.t.Errorf("QueueDepth lists queue %s twice", r.Queue)
		}
		got[r.Queue] = r
	}
	for q, w := range map[string]store.QueueDepthRow{
		"a": {Queue: "a", Visible: 2, Leased: 1, OldestEnqueued: t0},
		"b": {Queue: "b", Visible: 1, Leased: 0, OldestEnqueued: at(5 * time.Second)},
	} {
		g, ok := got[q]
		if !ok {
			s.t.Errorf("QueueDepth has no row for queue %s", q)
			continue
		}
		if g.Visible != w.Visible || g.Leased != w.Leased {
			s.t.Errorf("queue %s: visible %d leased %d, want visible %d leased %d", q, g.Visible, g.Leased, w.Visible, w.Leased)
		}
		s.wantTime("queue "+q+" OldestEnqueued", g.OldestEnqueued, w.OldestEnqueued)
	}
	for q, r := range got {
		if q != "a" && q != "b" && (r.Visible != 0 || r.Leased != 0) {
			s.t.Errorf("QueueDepth lists messages in queue %s that was never sent to: %+v", q, r)
		}
	}
}
