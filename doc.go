// Package conduit is an event store for Go that lives in your PostgreSQL
// database, beside your own tables.
//
// # Why
//
// Keeping events in one system and read models in another means two
// writes that can disagree: an event stored whose read row never came, or
// the reverse. Conduit keeps the events (table conduit.events) and your
// read tables in the same database, so an append and the rows it produces
// commit in one transaction, and the read tables are plain SQL you query,
// index and join as you like. An append sends its events in one statement
// whatever their number; every expected-version mode is enforced
// atomically by the database; and the global log can be followed without
// ever skipping an event that committed late.
//
// # Appending and expected versions
//
// A stream is a sequence of events under one id ("order-42"), numbered from
// version 1. [Store.Append] writes events to a stream atomically if the
// stream is where the caller expects it:
//
//   - [Any]: wherever the stream is (a new stream included);
//   - [NoStream]: the stream has no events yet;
//   - [StreamExists]: the stream has at least one event;
//   - [Exactly](n): the stream's version is n, the version the caller
//     decided on (optimistic concurrency; Exactly(0) is NoStream).
//
// When the expectation fails the append writes nothing and returns a
// [*VersionConflictError] carrying the expected and actual versions. Two
// racing appends cannot both pass: appends to one stream are serialized (a
// transaction-scoped lock on the stream), and a UNIQUE (stream_id,
// stream_version) constraint backs the check. With Any and StreamExists a
// concurrent append is never a conflict: the later one goes after it.
//
// [Store.AppendTx] does the same inside your own pgx transaction, so events
// commit or roll back with your other writes; refusals leave the
// transaction usable. If your transaction wrote before a younger one
// appended to the same stream, the append fails with
// [*TransactionOrderError]: retry the whole transaction (see Reading and the
// safe horizon). [Store.StreamVersionTx], [Store.ReadStreamTx],
// [Entity.LoadTx] and [Entity.UpdateTx] read and decide inside the
// transaction too; [Store.InTx] commits and then wakes projectors.
//
// # Batching concurrent appends
//
// Appends of one Store that arrive while another is in flight go to the
// database together: one statement (conduit.append_batch, or
// conduit.append_batch_one when every append has one event,
// conduit.append_batch_one_outbox when some of those also enqueue outbox
// messages) in one transaction, so one commit for many appends. The batching
// is natural: an append that finds nothing in flight is sent at once (no
// added latency when idle); those that arrive meanwhile wait, and are sent
// together as soon as the database answers, up to [Config.MaxAppendBatch]
// appends (64 by default) and [Config.MaxAppendSize] bytes. Under load,
// right after a batch of several appends has been answered, the next batch
// waits a little for that batch's callers to append again (until as many
// appends wait, for at most a quarter of that batch's time and 1 ms):
// without it, the first of them would go alone and the others would wait
// for it, which halves the batches. After an append alone (an idle store, a
// single writer) nothing waits. Each append in a batch keeps its own
// expected version, idempotency, typed result and outbox messages: a
// conflict refuses that append only, and the database explains it after the
// batch, as for an append alone. The appends of a batch that write share
// one transaction id, with global positions in call order; a stream appears
// at most once in a batch (a later append to it goes in the next batch), so
// per-stream order stays global order and readers, the safe horizon and
// projectors see nothing new. The batch takes its streams' locks (and its
// outbox messages' keys', the same locks) in one fixed order, so batches
// never deadlock each other.
//
// A batch's failure never turns into a wrong answer: if the database
// refuses the batch's statement (a unique violation caused by a writer that
// bypasses the stream lock, an event id stored elsewhere, a deadlock),
// nothing of it committed, and each append is sent alone, getting its own
// answer; if the connection is lost or the server stops while a batch is in
// flight, every append in it returns an error that [IsOutcomeUnknown]
// reports (resend the same events: their ids make that safe). A caller
// whose context ends while its append waits gets the context's error, and
// its append is never sent; once sent, a caller that stops waiting gets the
// context's error, whose outcome is unknown, as for an append alone. A
// send that takes longer than 20 ms (it waits for the lock of a stream held
// by a long transaction, say) lets the next batch go beside it, so one slow
// append never holds the others up.
//
// Some appends always go alone: with synchronous projections
// ([Config.Projections]), each append runs in its own transaction so that a
// projection's failure rolls back only its own append; [Store.AppendTx]
// runs in the caller's transaction. [Config.DisableAppendBatching] sends
// every append alone. (Batching appends with synchronous projections, each
// under a savepoint of its own in one transaction, was measured and does
// not pay: the savepoint, the append, the projection's statements and the
// release go one after the other on the batch's connection, where appends
// alone run side by side on the pool's connections and the server already
// shares their commits' WAL flushes; see BENCHMARKS.md.)
//
// # Event identity and retries
//
// [NewEvent] gives each event a UUIDv7, fixed before the first append.
// Appending events whose ids are stored already, at the same place, is an
// idempotent retry: it writes nothing and returns [AppendResult.Duplicate]
// true. So a client that lost the commit acknowledgement resends the same
// events. Append never writes into its arguments: an [EventData] built by
// hand with a zero ID gets a fresh id at each call, and resending it stores
// it again; set ID yourself when you may retry. An event id already used
// elsewhere is a [*DuplicateEventIDError].
//
// Two questions decide a retry. [IsRefused]: the store refused and wrote
// nothing (a version conflict, a transaction-order refusal, invalid input,
// a reused id): reload, decide again, or fix the input. [IsOutcomeUnknown]:
// the connection was lost, the server restarted, or the transaction hit a
// serialization failure or a deadlock: the events may or may not be stored,
// so resend the same events (for AppendTx, retry the transaction):
//
//	for {
//		res, err = store.Append(ctx, stream, conduit.Exactly(v), events...)
//		if !conduit.IsOutcomeUnknown(err) || ctx.Err() != nil {
//			break
//		}
//	}
//	if conduit.IsRefused(err) { /* reload and decide again */ }
//
// Input is checked before anything is sent: stream ids of 1 to
// [MaxStreamIDLength] bytes, event types of 1 to [MaxEventTypeLength]
// bytes, at most [MaxEventsPerAppend] events and [Config.MaxAppendSize]
// bytes (16 MiB by default) per call, data that is valid JSON storable as
// jsonb (no \u0000), data plus metadata within [Config.MaxEventSize] (1 MiB
// by default), and an expected version that is one of the four modes.
//
// # Reading and the safe horizon
//
// [Store.ReadStream] yields a stream's events in version order;
// [Store.ReadAll] yields the global log of every stream. Both are
// iter.Seq2[Event, error] values that page through the table
// ([Config.ReadPageSize] events for the first statement, more while the loop keeps up) and yield each event as its
// row comes off the wire: no page is held in memory.
//
// Positions in the global log are taken when a row is inserted but become
// visible when its transaction commits, so they can commit out of order: a
// reader that remembers only "the last position I saw" may skip an event
// that commits late. Each event therefore also records its writer's
// transaction id, a [Position] is the pair (transaction id, global
// position), and ReadAll returns, in one statement, only events of
// transactions older than every transaction still running (the safe
// horizon), in (transaction id, global position) order. A reader that
// resumes after the last Position it saw never misses an event; while a
// write transaction stays open, ReadAll stops short of it instead of
// skipping it. The price: a long-running write transaction anywhere in
// the cluster delays readers of the global log until it ends.
//
// Ordering by transaction id could put a stream's events out of version
// order when a transaction that started writing early appends after a
// younger one; AppendTx refuses that case with the retryable
// [*TransactionOrderError], so a stream's order always equals its order in
// the global log.
//
// # Synchronous projections
//
// A [Projection] turns events into rows of read tables. Projections listed
// in [Config.Projections] run inside every append's transaction (Append's
// and AppendTx's), in order, for each appended event: when the append
// returns, the read tables already show it, and a projection error rolls
// the whole append back and comes back as a [*ProjectionError] naming the
// projection. An idempotent retry does not run them again.
//
// A [Router] is a projection built from typed handlers, one per event
// type, instead of a switch; [On] registers a handler that receives the
// event's data decoded into your own struct:
//
//	totals := conduit.NewRouter("order_totals", "shop.order_totals")
//	conduit.On(totals, "item_added", func(ctx context.Context, tx pgx.Tx, e conduit.Event, d ItemAdded) error {
//		_, err := tx.Exec(ctx, `UPDATE shop.order_totals SET total = total + $2 WHERE order_id = $1`,
//			e.StreamID, d.Quantity*d.Price)
//		return err
//	})
//	store, err := conduit.NewStore(pool, &conduit.Config{Projections: []conduit.Projection{totals}})
//
// # Asynchronous projectors
//
// A [Projector] runs a projection (the same [Projection] interface, [Router]
// included) behind the log instead of inside the append: it reads the global
// log below the safe horizon from its checkpoint, in batches of
// [ProjectorConfig.BatchSize], and for each batch applies the events and
// moves its checkpoint (a [Position]) in one transaction. A crash anywhere
// re-applies nothing twice and loses nothing; an event that commits late is
// never skipped; a rolled-back append never stalls it. Batches commit with
// synchronous_commit off unless [ProjectorConfig.DurableCommit]: a server
// crash can lose only whole batches, rows and checkpoint together, which
// the projector then applies again. A projection that
// implements [EventTypeFilter] receives only its types, while its checkpoint
// moves past the others in the same batches.
//
// A handler's statement per event costs a round trip per event. A
// [BatchProjection] takes the whole batch in one ApplyBatch call and can
// write it in one (a multi-row upsert from arrays, a pgx.Batch, COPY into a
// staging table): a rebuild then replays at the speed of the database. A
// [Router] is one: its [OnWrite] handlers queue their statements, and the
// statements of consecutive events go out together. When a batch fails, the
// projector rolls it back and applies its events one at a time, so that
// only the failing event meets the poison policy.
//
//	p, err := conduit.NewProjector(store, orderTotals, nil)
//	go p.Run(ctx) // until ctx ends; run it in as many processes as you like
//	res, err := store.Append(ctx, "order-42", conduit.Any, placed)
//	err = store.WaitFor(ctx, "order_totals", res.Position) // read your own writes
//
// WaitFor does not wait for what cannot come: a projection stalled short of
// the position returns a [*ProjectionStalledError], and a name that never
// ran, with no Projector made on this Store, returns [ErrNotFound] at once.
// [Projector.CatchUp] applies every event committed before the call (the
// log's [Store.Head]) and returns: read tables up to date in a test,
// without sleeps, or in a script.
//
// Wake-ups: Append sends a NOTIFY on [EventsChannel] after its commit,
// coalesced, outside the append's transaction (a NOTIFY inside it would
// serialize every committing append on a cluster-wide lock); each Store runs
// one listening connection for its projectors; projectors in the appending
// process are woken directly. Notifications are hints: every projector also
// polls ([ProjectorConfig.PollInterval]), so lost notifications cost only
// latency. [ProjectorConfig.PollOnly] turns LISTEN off, for PgBouncer in
// transaction mode (see Behind PgBouncer). After [Store.AppendTx], call [Store.Notify] once the
// transaction has committed, or use [Store.InTx].
//
// One instance applies at a time. A lease row (owner, epoch, expiry by the
// database clock) in conduit.projections is taken by one instance; every
// batch locks that row and checks owner and epoch in its own transaction,
// so an instance that was paused, partitioned or replaced can never move
// the checkpoint. The owner renews its lease every third of
// [ProjectorConfig.LeaseDuration] from a goroutine of its own, however long
// a batch takes, so the status says running, never stopped, while it
// applies. Standbys take over within LeaseDuration of the owner's death; a
// stopped projector rolls back its batch in flight and releases its lease.
//
// Status, from Go ([Store.ProjectionStatus]) and from SQL
// (SELECT * FROM conduit.projection_status()): checkpoint, lag in events and
// in time (counted exactly up to 10,000 events behind, estimated beyond, as
// lag_exact and ProjectionStatus.LagEstimated say, so that status costs
// milliseconds at any lag), last progress, state (running, caught_up, stalled, stopped,
// rebuilding, paused), the stall reason, the number of parked events, and the
// backend holding back the safe horizon when a long transaction does.
//
// Rebuild: SELECT conduit.rebuild_projection('name') at a psql prompt, or
// [Store.RebuildProjection], truncates the read tables the projection
// declares ([ReadTableOwner]) and resets its checkpoint in one transaction,
// after any batch in flight; the running instance replays from the start.
// Readers of the tables see them empty, then filling, until the replay ends.
// [Store.RebuildProjectionOnline] (SELECT conduit.rebuild_projection_online('name'))
// rebuilds without that: the running instance replays into shadow copies of
// the read tables, between its live batches, and swaps them in, in one
// short transaction, once the replay has reached the live checkpoint. Its
// handlers name their tables through [Table], which gives the shadow copy
// during the replay.
//
// Pause: SELECT conduit.pause_projection('name'), or
// [Store.PauseProjection], waits for a batch in flight; from then on no
// instance applies anything (each batch checks under its lock on the
// projection's row), instances keep their lease, status says paused, and
// WaitFor and CatchUp short of their position return a
// [*ProjectionPausedError]. conduit.resume_projection('name') or
// [Store.ResumeProjection] resumes it.
//
// The conduit command (cmd/conduit) does all of this from a terminal:
// conduit projections list, status, rebuild (with a progress bar), pause,
// resume, parked, retry and skip, and conduit doctor.
//
// # Failure handling
//
// Database errors (a dropped connection, a restarted server, a terminated
// backend) are retried with exponential backoff and jitter; the projector
// never dies silently and needs no restart. [Projector.Run] returns early
// only for [ErrRestoredDatabase]: after a logical restore into another
// cluster, transaction ids restart below the stored ones and readers would
// see nothing new; SELECT conduit.rebase_transaction_ids() repairs it, and
// releases the leases the dump carried, so projectors start at once.
//
// A handler is bounded by [ProjectorConfig.HandlerTimeout] (LeaseDuration
// by default), its time in Go and in the database together: past it, its
// context is cancelled and the event counts as a failed attempt, even if
// the handler never returns. A handler slower than the lease but within
// HandlerTimeout is merely slow: the lease stays with its owner. The same
// bound frees the locks of an owner paused in the middle of a batch
// (SIGSTOP, a frozen VM), whose renewals stop with it: a batch takes new
// events for HandlerTimeout/10 at most, then commits, and the server ends a
// session idle in a batch's transaction for 1.25 × HandlerTimeout
// (idle_in_transaction_session_timeout), which a live owner, its handlers
// bounded, never reaches. Another instance takes over from a paused owner
// within about max(LeaseDuration, 1.25 × HandlerTimeout). A handler still
// running at twice HandlerTimeout is taken for stuck: its batch gives its
// slot of the connection budget back (see Connections; it keeps its pool
// connection until the handler returns), its owner stops renewing, and
// another instance takes over when the lease expires.
//
// A poison event (one the projection keeps failing on) is retried
// [ProjectorConfig.MaxAttempts] times, then handled by the projector's
// [PoisonPolicy]: [PoisonStop] (the default) stops at the event and
// reports the projection stalled, with the event and the error, retrying it
// now and then; [PoisonPark] parks it in conduit.parked_events in the
// checkpoint's transaction and goes on. The failed attempts are counted in
// the projection's row of conduit.projections, by whichever instance holds
// the lease, so a change of owner does not start the count again and the
// policy applies in the end; status shows the event, its attempts and its
// last error ([ProjectionStatus.FailedAttempts]). After a failure the events
// before the failing one are committed, and it is retried alone, with
// backoff ([ProjectorConfig.RetryBackoff]). [Store.ParkedEvents],
// [Store.RetryParked] and [Store.SkipParked] (and the SQL functions
// conduit.retry_parked_event and conduit.skip_parked_event) manage parked
// events.
//
// # Connections
//
// A Store never opens more than its pool's MaxConns connections, plus one:
// the listener's own connection, outside the pool, while a Projector of the
// Store runs [Projector.Run] without PollOnly. Appends, reads, WaitFor and
// status take one pool connection per call, for one statement (or the
// append's transaction with synchronous projections; a batch of
// concurrent appends takes one for all of them); the notifier sends
// one short NOTIFY at a time after appends. A projector's batch holds one
// pool connection while it applies its events, drawn from the projectors'
// budget, [Config.MaxProjectorConns] (a quarter of MaxConns by default, at
// least 1) for all the Store's projectors together, so appends and reads
// always have the rest of the pool however slow the projectors are;
// projectors beyond the budget wait their turn and keep their leases. A
// projector catching up (its batches full) reads the next events ahead
// while a batch applies and commits, on a second connection of the budget,
// and on a third at the same time, when slots are free at once (with the
// default budget of 1, for pools of up to 7 connections, it does not read
// ahead; with 2, on one connection; Config's example "MaxProjectorConns").
// Its lease (taking it, the keeper's renewals every LeaseDuration/3,
// counting failures) costs short statements on the pool. For a pool of
// their own, run the projectors on a second Store over a second pool.
//
// # The outbox
//
// Messages for other services are written to conduit.outbox in the same
// transaction as the events they announce: declaratively, by
// [Config.Outbox] rules that map event types to messages (enqueued by the
// append's own statement, so "publish every order_paid" needs no code at
// each append site), or explicitly with [Store.EnqueueTx] (and
// [Store.Enqueue]). An append that is refused or rolls back enqueues
// nothing.
//
// A [Relay] delivers them to a [Publisher] ([PublishFunc] adapts a
// function; the conduitnats module holds a NATS JetStream publisher that
// sends each message's ID as Nats-Msg-Id): at least once, in order per
// key. It is the projectors' engine's second client: it reads the outbox in
// (transaction id, position) order below the safe horizon, holds a lease
// fenced by an epoch (one relay delivers at a time across processes), wakes
// on the same notifications and polls as the guarantee. A message that
// keeps failing becomes a dead letter after [RelayConfig.MaxAttempts]; it
// holds back the later messages of its key only ([Store.DeadLetters],
// [Store.RetryDeadLetter], [Store.DiscardDeadLetter], or
// conduit.retry_dead_letter and conduit.discard_dead_letter in SQL). The
// table is bounded: three generations, truncated whole once delivered.
// [Store.OutboxStatus] and conduit.outbox_status() report pending messages,
// the oldest one's age, dead letters, the last delivery and the relay's
// owner.
//
// # Observability
//
// [Config.MeterProvider] and [Config.TracerProvider] take OpenTelemetry
// providers (the API only: Conduit installs no SDK): metrics of appends,
// projector batches, lag, leases, the outbox and the safe horizon, and a
// span per append, projector batch and relay publish. An append's trace
// context is stored in its events' metadata (TraceparentKey) and the
// projector's span links back to it. [Store.Health] and
// [Store.HealthHandler] report a projector or relay that makes no progress
// while work waits, and why. Logs go to [Config.Logger], by default
// warnings and errors only.
//
// # Entities
//
// [Entity] is the event-sourced entity (aggregate) pattern: [Entity.Load]
// folds a stream into a state value with your Evolve function and returns
// it with the stream's version; [Entity.Update] loads, asks your decide
// function for new events, and appends them with Exactly(the loaded
// version), reloading and deciding again when another writer got there
// first, up to [Entity.MaxAttempts] times.
//
// # Migrations
//
// Conduit's tables and functions live in the conduit schema, created by
// embedded goose migrations. [Migrate] applies them, with its own goose
// version table ([MigrationTable]) and a session advisory lock, so two
// deploys migrating at once are safe; [MigrateTo] moves up or down to a
// version. Both need a direct connection, and refuse a pooler with
// [ErrNeedsDirectConnection] (see Behind PgBouncer). When the schema is
// current they only read the version table, taking no lock: a role with
// CONNECT, USAGE on the conduit schema and SELECT on
// conduit.goose_db_version may run them at start-up. To run them from your own goose pipeline instead, take
// [Migrations] and give them their own version table, apart from yours
// (goose creates that table before the first migration, so create its
// schema first):
//
//	_, err := db.ExecContext(ctx, "CREATE SCHEMA IF NOT EXISTS conduit")
//	provider, err := goose.NewProvider(goose.DialectPostgres, db, conduit.Migrations(),
//		goose.WithTableName(conduit.MigrationTable))
//
// # Privileges
//
// Events are immutable against every role but the owner of conduit.events:
// the owner can disable or drop the triggers that refuse UPDATE, DELETE and
// TRUNCATE. So split the roles (the README has the script):
//
//   - the owner runs the migrations (Migrate, in CI or a deploy step) and
//     owns the conduit schema; the application never connects as it;
//   - the application role gets what the library needs from
//     SELECT conduit.grant_application('role'): USAGE on the schema,
//     SELECT on conduit.events and INSERT only on the columns an append
//     writes (never transaction_id, global_position or recorded_at, so no
//     one can forge the log's order or clock), the projectors' rights on
//     conduit.projections and conduit.parked_events, and EXECUTE on the
//     functions the library calls, rebuild_projection included; it needs
//     from you what its projections write on your read tables, and
//     TRUNCATE for rebuilds. conduit.revoke_application takes it back;
//   - a reporting role gets SELECT on the read tables you name from
//     conduit.grant_reporting('role', '{shop.orders}', '30s'), with
//     read-only transactions by default (they take no transaction id, so
//     they never hold back the safe horizon) and a statement_timeout.
//
// Only the owner can run conduit.rebase_transaction_ids (it disables a
// trigger for its transaction).
//
// # Behind PgBouncer
//
// Conduit works through PgBouncer in transaction mode, and through other
// poolers that run each transaction on whichever server connection is
// free, with three settings.
//
// Query mode: connect with default_query_exec_mode=exec in the URL (or set
// ConnConfig.DefaultQueryExecMode to pgx.QueryExecModeExec). pgx's default
// prepares each statement by name on its connection; through such a pooler
// the next transaction runs on another server connection, where the
// statement is missing (SQLSTATE 26000) or one of its name exists already
// (42P05). exec keeps nothing on the server between statements, and takes
// one round trip per statement. cache_describe works too, but remembers
// result columns per connection, which a migration can make stale;
// simple_protocol works; describe_exec does not. They parse and plan every
// statement again: keep pgx's default on direct connections. With the
// wrong mode, statements fail now and then, not every time, each with
// [ErrPoolerMisconfigured] naming the fix; a projector logs it and retries,
// never counting it against the event.
//
// Projectors: set [ProjectorConfig.PollOnly]. LISTEN needs a session of
// its own; leases, checkpoints, [Store.WaitFor] and [Projector.CatchUp] are
// rows and single transactions, and work as they are.
//
// Migrations: [Migrate] needs a direct connection. Its session advisory
// lock would stay with an idle server connection of the pooler and block
// every later Migrate, so it first checks that its connection's statements
// run in the server process the connection was opened with (a pooler
// answers the opening with a process id of its own; a direct connection
// keeps its process for life), on the lock's own connection too, and
// otherwise returns [ErrNeedsDirectConnection] before taking the lock or
// changing anything. It refuses poolers in session mode as well, which it
// cannot tell apart. Run it against PostgreSQL itself.
//
// Nothing else that needs a session works through such a pooler: SET
// outside a transaction (use SET LOCAL; set parameters such as
// statement_timeout on the role, since PgBouncer refuses them in the
// connection's startup), PREPARE, session advisory locks, temporary tables
// kept across transactions, LISTEN.
//
// # Errors
//
// Every error the store returns for an expected outcome is a typed error
// that matches a sentinel with errors.Is, and carries its data for
// errors.As:
//
//   - [ErrVersionConflict]: [*VersionConflictError] (stream, expected, actual);
//   - [ErrDuplicateEventID]: [*DuplicateEventIDError] (the id, and where it is used when known);
//   - [ErrTransactionOrder]: [*TransactionOrderError], only from AppendTx;
//   - [ErrInvalidEvent]: [*ValidationError] naming the field and event index;
//     [ErrEventTooLarge] and [ErrAppendTooLarge] for size limits also match it;
//   - [ErrProjection]: [*ProjectionError], unwrapping to the projection's error;
//   - [ErrNotFound]: an unknown projection or parked event;
//   - [ErrProjectionStalled]: [*ProjectionStalledError], from WaitFor and CatchUp;
//   - [ErrRestoredDatabase]: [*RestoredDatabaseError], from appends to
//     existing streams, ReadAll and projectors on a database restored from a
//     logical dump, naming the fix;
//   - [ErrInvalidConfig]: [*ConfigError] naming the field out of range;
//   - [ErrPoolerMisconfigured]: the pool's query mode does not suit a pooler in
//     transaction mode; the error names the fix and wraps the server's;
//   - [ErrNeedsDirectConnection]: [Migrate] or [MigrateTo] through a pooler.
//
// [IsRefused] and [IsOutcomeUnknown] say how to retry (see Event identity
// and retries); [IsRetryable] reports either a refusal that a reload may
// cure or an unknown outcome.
// Events are immutable: the database refuses UPDATE, DELETE and TRUNCATE
// on conduit.events, to every role but the table's owner (see Privileges).
package conduit
