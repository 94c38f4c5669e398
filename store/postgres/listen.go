package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tasker-go/tasker/store"
)

// maxChannelLen is the longest channel name PostgreSQL accepts
// (NAMEDATALEN - 1).
const maxChannelLen = 63

// channelName is the notification channel of a topic (a queue name or
// store.EventsTopic) in a schema: "schema.topic", so that installations in
// different schemas of one database do not wake each other. A name that
// would be too long is replaced by a hash of it; a collision costs no more
// than a spurious wake-up.
func channelName(schema, topic string) string {
	name := schema + "." + topic
	if len(name) <= maxChannelLen {
		return name
	}
	h := fnv.New64a()
	h.Write([]byte(name))
	return fmt.Sprintf("tasker.%016x", h.Sum64())
}

// queueChannels returns the distinct channels of queues.
func (e *executor) queueChannels(queues []string) []string {
	seen := make(map[string]bool, 1)
	var out []string
	for _, q := range queues {
		if !seen[q] {
			seen[q] = true
			out = append(out, channelName(e.schema, q))
		}
	}
	return out
}

// Listen timing.
const (
	// listenHealthInterval is how long the listener waits in silence
	// before checking that its connection is alive: a connection cut
	// without a reset (a network partition) is noticed within it.
	listenHealthInterval = 15 * time.Second
	listenPingTimeout    = 5 * time.Second
	listenBackoffMin     = 50 * time.Millisecond
	listenBackoffMax     = 5 * time.Second
)

// Listen implements store.Listener with LISTEN on a connection of its own,
// outside the pools, so that waiting for notifications never holds a
// connection that work needs. Queue messages and durable events notify
// their channels in the transaction that inserts them (see QueueSend and
// EventsInsert). When the connection is lost, Listen reconnects with
// exponential backoff (50ms to 5s), subscribes again and calls OnConnect.
func (d *Driver) Listen(ctx context.Context, p store.ListenParams) error {
	if p.OnNotify == nil {
		return errors.New("postgres: listen: ListenParams.OnNotify is required")
	}
	topics := make(map[string]string, len(p.Topics)) // channel -> topic
	for _, t := range p.Topics {
		topics[channelName(d.schema, t)] = t
	}
	backoff := listenBackoffMin
	for {
		subscribed, err := d.listenOnce(ctx, topics, p)
		if ctx.Err() != nil {
			return nil
		}
		if subscribed {
			backoff = listenBackoffMin
		}
		if p.OnError != nil {
			p.OnError(err, backoff)
		}
		timer := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		}
		backoff = min(backoff*2, listenBackoffMax)
	}
}

// listenOnce opens a connection, subscribes and delivers notifications
// until the connection fails or ctx ends. It reports whether the
// subscription was in place.
func (d *Driver) listenOnce(ctx context.Context, topics map[string]string, p store.ListenParams) (bool, error) {
	conn, err := pgx.ConnectConfig(ctx, d.listenConfig.Copy())
	if err != nil {
		return false, fmt.Errorf("postgres: listen: connect: %w", mapErr(err))
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), listenPingTimeout)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	if len(topics) > 0 {
		channels := make([]string, 0, len(topics))
		for ch := range topics {
			channels = append(channels, "LISTEN "+pgx.Identifier{ch}.Sanitize())
		}
		sort.Strings(channels)
		// No arguments: one round trip through the simple protocol.
		if _, err := conn.Exec(ctx, strings.Join(channels, "; ")); err != nil {
			return false, fmt.Errorf("postgres: listen: subscribe: %w", mapErr(err))
		}
	}
	if p.OnConnect != nil {
		p.OnConnect()
	}
	for {
		waitCtx, cancel := context.WithTimeout(ctx, listenHealthInterval)
		n, err := conn.WaitForNotification(waitCtx)
		cancel()
		switch {
		case err == nil:
			if t, ok := topics[n.Channel]; ok && !(p.IgnoreOwn && n.Payload == d.instance) {
				p.OnNotify(t)
			}
		case ctx.Err() != nil:
			return true, ctx.Err()
		case errors.Is(err, context.DeadlineExceeded) && !conn.IsClosed():
			// Silence: make sure the connection is still there.
			pingCtx, cancel := context.WithTimeout(ctx, listenPingTimeout)
			err := conn.Ping(pingCtx)
			cancel()
			if err != nil {
				return true, fmt.Errorf("postgres: listen: connection check: %w", mapErr(err))
			}
		default:
			return true, fmt.Errorf("postgres: listen: %w", mapErr(err))
		}
	}
}

var _ store.Listener = (*Driver)(nil)

// settledNotifier tells other processes that this driver's transactions
// settled tasks (store.TasksSettledTopic). It notifies after the commit,
// from a statement of its own, rather than inside the settling
// transaction: PostgreSQL serializes the commits of transactions that
// notify, and a NOTIFY in every completing transaction cost a burn-down
// of no-op tasks about a tenth of its throughput. One notification is in
// flight at a time; settles during it are announced by one more after it,
// and notifications are at least settledGap apart.
type settledNotifier struct {
	d *Driver

	mu       sync.Mutex
	inFlight bool
	again    bool
	last     time.Time
}

const settledGap = 5 * time.Millisecond

// poke announces that a transaction settled tasks.
func (n *settledNotifier) poke() {
	n.mu.Lock()
	if n.inFlight {
		n.again = true
		n.mu.Unlock()
		return
	}
	n.inFlight = true
	n.mu.Unlock()
	go n.send()
}

func (n *settledNotifier) send() {
	for {
		n.mu.Lock()
		wait := settledGap - time.Since(n.last)
		n.mu.Unlock()
		if wait > 0 {
			time.Sleep(wait)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		// Best effort: a lost notification leaves the waiters to their
		// polls, as a lost connection of theirs would. Its transaction
		// does not wait for its commit to reach the disk (it writes
		// nothing but the hint, which is delivered at commit all the
		// same), so it costs no flush of its own beside the settling
		// transactions'.
		b := &pgx.Batch{}
		b.Queue("begin")
		b.Queue("set local synchronous_commit to off")
		b.Queue(`SELECT pg_notify($1, $2)`, channelName(n.d.schema, store.TasksSettledTopic), n.d.instance)
		b.Queue("commit")
		_ = n.d.pool.SendBatch(ctx, b).Close()
		cancel()
		n.mu.Lock()
		n.last = time.Now()
		if !n.again {
			n.inFlight = false
			n.mu.Unlock()
			return
		}
		n.again = false
		n.mu.Unlock()
	}
}
