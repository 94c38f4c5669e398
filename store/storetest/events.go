package storetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/tasker-go/tasker/store"
)

// newEvents returns n outbox rows named prefix.0, prefix.1, … with
// distinct payloads.
func newEvents(prefix string, n int) []store.EventInsert {
	out := make([]store.EventInsert, n)
	task := uuid.NewString()
	for i := range out {
		out[i] = store.EventInsert{
			EventID: uuid.NewString(), Name: fmt.Sprintf("%s.%d", prefix, i), TaskUUID: task, StepUUID: uuid.NewString(),
			Payload: json.RawMessage(fmt.Sprintf(`{"i": %d, "prefix": %q}`, i, prefix)),
		}
	}
	return out
}

// insertEvents commits evs in one transaction stamped now.
func (s *suite) insertEvents(now time.Time, evs ...store.EventInsert) {
	s.t.Helper()
	s.tx(func(tx store.Tx) error {
		return tx.EventsInsert(s.ctx, store.EventsInsertParams{Events: evs, Now: now})
	})
}

func (s *suite) eventsAfter(after int64, limit int) []store.EventRow {
	s.t.Helper()
	rows, err := s.r().EventsAfter(s.ctx, store.EventsAfterParams{After: after, Limit: limit})
	if err != nil {
		s.t.Fatalf("EventsAfter(%d, %d): %v", after, limit, err)
	}
	return rows
}

func eventNames(rows []store.EventRow) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = r.Name
	}
	return out
}

// wantAscending fails unless sequences strictly increase.
func (s *suite) wantAscending(what string, rows []store.EventRow) {
	s.t.Helper()
	for i := 1; i < len(rows); i++ {
		if rows[i].Seq <= rows[i-1].Seq {
			s.t.Errorf("%s: seq %d follows seq %d", what, rows[i].Seq, rows[i-1].Seq)
		}
	}
}

// testEventsInsertAfter checks that events read back whole, in insertion
// order within a transaction and commit order across transactions, and
// that After and Limit page through them.
func testEventsInsertAfter(s *suite) {
	if rows := s.eventsAfter(0, 10); len(rows) != 0 {
		s.t.Fatalf("empty outbox returned %d events", len(rows))
	}
	first, second := newEvents("a", 3), newEvents("b", 2)
	s.insertEvents(at(time.Second), first...)
	s.insertEvents(at(2*time.Second), second...)

	all := s.eventsAfter(0, 0)
	s.wantStrings("names", eventNames(all), []string{"a.0", "a.1", "a.2", "b.0", "b.1"})
	s.wantAscending("all events", all)
	for i, r := range all {
		want := append(first, second...)[i]
		if r.EventID != want.EventID || r.TaskUUID != want.TaskUUID || r.StepUUID != want.StepUUID {
			s.t.Errorf("event %d = {%s %s %s}, want {%s %s %s}", i, r.EventID, r.TaskUUID, r.StepUUID,
				want.EventID, want.TaskUUID, want.StepUUID)
		}
		s.wantJSON(fmt.Sprintf("event %d payload", i), r.Payload, want.Payload)
		created := at(time.Second)
		if i >= len(first) {
			created = at(2 * time.Second)
		}
		s.wantTime(fmt.Sprintf("event %d created_at", i), r.CreatedAt, created)
	}
	if len(all) != 5 {
		return
	}

	s.wantStrings("after the second event", eventNames(s.eventsAfter(all[1].Seq, 0)), []string{"a.2", "b.0", "b.1"})
	s.wantStrings("limit 2", eventNames(s.eventsAfter(0, 2)), []string{"a.0", "a.1"})
	s.wantStrings("limit 2 after the second", eventNames(s.eventsAfter(all[1].Seq, 2)), []string{"a.2", "b.0"})
	if rows := s.eventsAfter(all[4].Seq, 10); len(rows) != 0 {
		s.t.Errorf("after the last event: %d events, want none", len(rows))
	}

	// A rolled-back insert leaves nothing, and the next committed event
	// still comes after every event already readable.
	if err := s.try(func(tx store.Tx) error {
		if err := tx.EventsInsert(s.ctx, store.EventsInsertParams{Events: newEvents("gone", 2), Now: at(3 * time.Second)}); err != nil {
			return err
		}
		return errRollback
	}); !errors.Is(err, errRollback) {
		s.t.Fatalf("rolled-back insert: %v", err)
	}
	s.insertEvents(at(4*time.Second), newEvents("c", 1)...)
	rest := s.eventsAfter(all[4].Seq, 10)
	s.wantStrings("after a rollback", eventNames(rest), []string{"c.0"})
	if len(rest) == 1 && rest[0].Seq <= all[4].Seq {
		s.t.Errorf("event committed after seq %d got seq %d", all[4].Seq, rest[0].Seq)
	}

	// An empty insert is a no-op.
	s.insertEvents(at(5 * time.Second))
	if n := len(s.eventsAfter(0, 0)); n != 6 {
		s.t.Errorf("%d events after an empty insert, want 6", n)
	}
}

var errRollback = errors.New("storetest: roll back on purpose")

// testEventsDefaultLimit checks that a zero Limit reads at most 100.
func testEventsDefaultLimit(s *suite) {
	s.insertEvents(t0, newEvents("many", 105)...)
	if n := len(s.eventsAfter(0, 0)); n != 100 {
		s.t.Errorf("Limit 0 returned %d events, want 100", n)
	}
	if n := len(s.eventsAfter(0, 200)); n != 105 {
		s.t.Errorf("Limit 200 returned %d events, want 105", n)
	}
}

// testEventsCommitOrder checks that sequence numbers follow commit order:
// while one transaction that wrote events is open, a second one's events
// must not become readable ahead of the first's, or a reader remembering
// the last sequence it saw would skip the first transaction's events.
func testEventsCommitOrder(s *suite) {
	txA, err := s.d.Begin(s.ctx)
	if err != nil {
		s.t.Fatalf("Begin: %v", err)
	}
	if err := txA.EventsInsert(s.ctx, store.EventsInsertParams{Events: newEvents("first", 1), Now: t0}); err != nil {
		_ = txA.Rollback()
		s.t.Fatalf("insert in the first transaction: %v", err)
	}
	second := make(chan error, 1)
	go func() {
		second <- store.InTx(s.ctx, s.d, func(tx store.Tx) error {
			return tx.EventsInsert(s.ctx, store.EventsInsertParams{Events: newEvents("second", 1), Now: t0})
		})
	}()
	// Give the second writer time to get as far as it can. This is not a
	// timing assertion: a correct driver makes it wait whatever the delay.
	time.Sleep(200 * time.Millisecond)
	seen := s.eventsAfter(0, 10)
	if err := txA.Commit(); err != nil {
		s.t.Fatalf("commit the first transaction: %v", err)
	}
	if err := <-second; err != nil {
		s.t.Fatalf("second transaction: %v", err)
	}
	all := s.eventsAfter(0, 10)
	s.wantStrings("after both commits", eventNames(all), []string{"first.0", "second.0"})
	// Whatever was readable mid-way must be a prefix of the final stream.
	for i, r := range seen {
		if i >= len(all) || all[i].Seq != r.Seq {
			s.t.Errorf("mid-way the reader saw %s (seq %d) before the first transaction's event: %q then %q",
				r.Name, r.Seq, eventNames(seen), eventNames(all))
			break
		}
	}
}

// testEventsSeqNotReused checks that pruning the newest events does not
// let later events reuse their sequence numbers: a cursor past them would
// skip the new ones.
func testEventsSeqNotReused(s *suite) {
	s.insertEvents(t0, newEvents("old", 3)...)
	old := s.eventsAfter(0, 0)
	if len(old) != 3 {
		s.t.Fatalf("%d events, want 3", len(old))
	}
	var n int
	s.tx(func(tx store.Tx) error {
		var err error
		n, err = tx.EventsPrune(s.ctx, store.EventsPruneParams{Before: at(time.Hour)})
		return err
	})
	if n != 3 {
		s.t.Fatalf("pruned %d events, want 3", n)
	}
	s.insertEvents(at(time.Second), newEvents("new", 1)...)
	rows := s.eventsAfter(old[2].Seq, 10)
	s.wantStrings("events after the pruned ones", eventNames(rows), []string{"new.0"})
}

// testEventsPrune checks that pruning deletes events created strictly
// before Before, bounded by UpTo when it is set.
func testEventsPrune(s *suite) {
	for i := range 4 {
		s.insertEvents(at(time.Duration(i)*time.Minute), newEvents(fmt.Sprintf("e%d", i), 1)...)
	}
	all := s.eventsAfter(0, 0)
	if len(all) != 4 {
		s.t.Fatalf("%d events, want 4", len(all))
	}
	prune := func(p store.EventsPruneParams) int {
		s.t.Helper()
		var n int
		s.tx(func(tx store.Tx) error {
			var err error
			n, err = tx.EventsPrune(s.ctx, p)
			return err
		})
		return n
	}

	// By age alone: e0 and e1 are older than 2m; e2 is exactly 2m old.
	if n := prune(store.EventsPruneParams{Before: at(2 * time.Minute)}); n != 2 {
		s.t.Errorf("pruned %d events by age, want 2", n)
	}
	s.wantStrings("after pruning by age", eventNames(s.eventsAfter(0, 0)), []string{"e2.0", "e3.0"})

	// By age and sequence: both are old enough, only e2 is at or below UpTo.
	if n := prune(store.EventsPruneParams{Before: at(time.Hour), UpTo: all[2].Seq}); n != 1 {
		s.t.Errorf("pruned %d events up to seq %d, want 1", n, all[2].Seq)
	}
	s.wantStrings("after pruning up to a sequence", eventNames(s.eventsAfter(0, 0)), []string{"e3.0"})

	// A sequence bound does not override age.
	if n := prune(store.EventsPruneParams{Before: at(time.Minute), UpTo: all[3].Seq}); n != 0 {
		s.t.Errorf("pruned %d events that are too young, want 0", n)
	}
	if n := prune(store.EventsPruneParams{Before: at(time.Hour), UpTo: all[3].Seq}); n != 1 {
		s.t.Errorf("pruned %d events, want the last 1", n)
	}
	if rows := s.eventsAfter(0, 0); len(rows) != 0 {
		s.t.Errorf("events left after pruning everything: %q", eventNames(rows))
	}
	if n := prune(store.EventsPruneParams{Before: at(time.Hour)}); n != 0 {
		s.t.Errorf("pruned %d events from an empty outbox", n)
	}
}

// testEventCursors checks that a cursor reads 0 until set, only moves
// forward, and is listed with the others.
func testEventCursors(s *suite) {
	get := func(name string) int64 {
		s.t.Helper()
		pos, err := s.r().EventCursorGet(s.ctx, store.EventCursorGetParams{Subscription: name})
		if err != nil {
			s.t.Fatalf("EventCursorGet %s: %v", name, err)
		}
		return pos
	}
	set := func(name string, pos int64, now time.Time) {
		s.t.Helper()
		s.tx(func(tx store.Tx) error {
			return tx.EventCursorSet(s.ctx, store.EventCursorSetParams{Subscription: name, Position: pos, Now: now})
		})
	}
	list := func() []store.EventCursor {
		s.t.Helper()
		cs, err := s.r().EventCursors(s.ctx)
		if err != nil {
			s.t.Fatalf("EventCursors: %v", err)
		}
		return cs
	}

	if pos := get("order.*#0"); pos != 0 {
		s.t.Errorf("absent cursor = %d, want 0", pos)
	}
	if cs := list(); len(cs) != 0 {
		s.t.Errorf("EventCursors on a fresh store = %+v, want none", cs)
	}

	set("order.*#0", 5, at(time.Second))
	if pos := get("order.*#0"); pos != 5 {
		s.t.Errorf("cursor = %d after setting 5", pos)
	}
	set("order.*#0", 3, at(2*time.Second))
	if pos := get("order.*#0"); pos != 5 {
		s.t.Errorf("cursor = %d after setting 3 over 5; a cursor never moves back", pos)
	}
	set("order.*#0", 9, at(3*time.Second))
	if pos := get("order.*#0"); pos != 9 {
		s.t.Errorf("cursor = %d after setting 9", pos)
	}
	set("audit", 2, at(4*time.Second))
	if pos := get("order.*#0"); pos != 9 {
		s.t.Errorf("cursor order.*#0 = %d after setting another subscription's", pos)
	}

	// A rolled-back move is not kept.
	if err := s.try(func(tx store.Tx) error {
		if err := tx.EventCursorSet(s.ctx, store.EventCursorSetParams{Subscription: "audit", Position: 50, Now: at(5 * time.Second)}); err != nil {
			return err
		}
		return errRollback
	}); !errors.Is(err, errRollback) {
		s.t.Fatalf("rolled-back cursor move: %v", err)
	}
	if pos := get("audit"); pos != 2 {
		s.t.Errorf("cursor audit = %d after a rolled-back move, want 2", pos)
	}

	cs := list()
	if len(cs) != 2 {
		s.t.Fatalf("EventCursors = %+v, want 2 cursors", cs)
	}
	byName := map[string]store.EventCursor{}
	for _, c := range cs {
		byName[c.Subscription] = c
	}
	if c := byName["audit"]; c.Position != 2 {
		s.t.Errorf("listed cursor audit = %+v, want position 2", c)
	} else {
		s.wantTime("audit updated_at", c.UpdatedAt, at(4*time.Second))
	}
	if c := byName["order.*#0"]; c.Position != 9 {
		s.t.Errorf("listed cursor order.*#0 = %+v, want position 9", c)
	}
}
