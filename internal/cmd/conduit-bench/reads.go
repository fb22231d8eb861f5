package main

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

const longStream = "ledger-long"

// benchReads: reading one 10,000-event stream, and the whole global log
// (1,000,000 events, the long stream included), by one reader.
func benchReads(ctx context.Context, srv *server) ([]row, error) {
	o := srv.opts
	db, err := srv.logDB(ctx)
	if err != nil {
		return nil, err
	}
	pool, err := db.pool(ctx, 2)
	if err != nil {
		return nil, err
	}
	defer pool.Close()

	store, err := conduit.NewStore(pool, nil)
	if err != nil {
		return nil, err
	}
	bigPages, err := conduit.NewStore(pool, &conduit.Config{ReadPageSize: 10_000})
	if err != nil {
		return nil, err
	}

	streamVs := []variant{
		readVariant("conduit", o.streamLen, func(ctx context.Context) iter.Seq2[conduit.Event, error] {
			return store.ReadStream(ctx, longStream, 1)
		}),
		rawReadVariant("raw", pool, o.streamLen, `SELECT `+rawColumns+`
			FROM conduit.events e WHERE e.stream_id = $1 ORDER BY e.stream_version`, longStream),
	}
	allVs := []variant{
		readVariant("conduit", o.readEvents, func(ctx context.Context) iter.Seq2[conduit.Event, error] {
			return store.ReadAll(ctx, conduit.Position{})
		}),
		rawReadVariant("raw", pool, o.readEvents, `SELECT `+rawColumns+`
			FROM conduit.events e ORDER BY e.transaction_id, e.global_position`),
	}
	if o.diagnose {
		streamVs = append(streamVs, readVariant("conduit, ReadPageSize 10000", o.streamLen,
			func(ctx context.Context) iter.Seq2[conduit.Event, error] {
				return bigPages.ReadStream(ctx, longStream, 1)
			}))
		allVs = append(allVs, pagedRawReadVariant(pool, o.readEvents),
			readVariant("conduit, ReadPageSize 10000", o.readEvents, func(ctx context.Context) iter.Seq2[conduit.Event, error] {
				return bigPages.ReadAll(ctx, conduit.Position{})
			}))
	}

	st, err := compare(ctx, o, "read stream", 1, o.duration, streamVs...)
	if err != nil {
		return nil, err
	}
	streamRow := readRow("one "+rate(float64(o.streamLen))+"-event stream", "raw SELECT … WHERE stream_id ORDER BY stream_version", streamVs, st)

	// One full read per run: it takes seconds already.
	st, err = compare(ctx, o, "read all", 1, 0, allVs...)
	if err != nil {
		return nil, err
	}
	allRow := readRow("global log of "+rate(float64(o.readEvents))+" events", "raw SELECT … ORDER BY (transaction_id, global_position), all rows in one query", allVs, st)
	return []row{streamRow, allRow}, nil
}

func readRow(name, baseline string, vs []variant, st []stats) row {
	r := row{group: "Reads", name: name, baseline: baseline, conduit: st[0], raw: st[1], target: 0.9}
	for i := 2; i < len(vs); i++ {
		r.diagnostics = append(r.diagnostics, diagnostic{vs[i].name, st[i]})
	}
	return r
}

// loadLog fills the log with total events through Conduit appends of 1000
// events: streamLen of them in longStream, the rest in 1000-event streams.
// Two loaders, as the machine has two cores. Then VACUUM ANALYZE, so that
// hint bits and statistics are settled before any reader runs.
func loadLog(ctx context.Context, pool *pgxpool.Pool, total, streamLen int) error {
	const batch = 1000
	store, err := conduit.NewStore(pool, nil)
	if err != nil {
		return err
	}
	type job struct {
		stream string
		n      int // appended batch by batch, in order, by one loader
	}
	jobs := make(chan job, 16)
	go func() {
		defer close(jobs)
		jobs <- job{longStream, streamLen}
		for i, left := 0, total-streamLen; left > 0; i, left = i+1, left-batch {
			select {
			case jobs <- job{fmt.Sprintf("ledger-%06d", i), min(batch, left)}:
			case <-ctx.Done():
				return
			}
		}
	}()
	begin := time.Now()
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for w := range errs {
		wg.Go(func() {
			b := newAppendBatch("", w, batch)
			for j := range jobs {
				for v := 0; v < j.n && errs[w] == nil; v += batch {
					if errs[w] = b.next(); errs[w] == nil {
						_, errs[w] = store.Append(ctx, j.stream, conduit.Exactly(int64(v)), b.events[:min(batch, j.n-v)]...)
					}
				}
				if errs[w] != nil {
					for range jobs { // let the producer finish
					}
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM conduit.events").Scan(&n); err != nil {
		return err
	}
	if n != total {
		return fmt.Errorf("load: %d events in the log, want %d", n, total)
	}
	log.Printf("loaded %d events in %s (%.0f/s)", n, time.Since(begin).Round(time.Millisecond), float64(n)/time.Since(begin).Seconds())
	_, err = pool.Exec(ctx, "VACUUM (ANALYZE) conduit.events")
	return err
}

// readCap bounds one read through Conduit: a read that is much slower than
// the baseline (as ReadAll was when its page query sorted the whole log for
// every page) stops there, and its rate is that of the events read so far.
const readCap = 10 * time.Second

// readVariant reads through Conduit and checks the count, unless the read
// hit readCap.
func readVariant(name string, want int, read func(context.Context) iter.Seq2[conduit.Event, error]) variant {
	return variant{name: name, start: func(context.Context, string, int) ([]func(context.Context) (int, error), error) {
		return []func(context.Context) (int, error){func(ctx context.Context) (int, error) {
			n, bytes := 0, 0
			stop := time.Now().Add(readCap)
			for e, err := range read(ctx) {
				if err != nil {
					return 0, err
				}
				n++
				bytes += len(e.Data)
				if n%1000 == 0 && time.Now().After(stop) {
					log.Printf("%s: read capped at %s after %d of %d events", name, readCap, n, want)
					return n, nil
				}
			}
			return checkCount(n, want, bytes)
		}}, nil
	}}
}

// rawReadVariant streams every row of one query into the same Event values
// Conduit yields.
func rawReadVariant(name string, pool *pgxpool.Pool, want int, query string, args ...any) variant {
	return variant{name: name, start: func(context.Context, string, int) ([]func(context.Context) (int, error), error) {
		return []func(context.Context) (int, error){func(ctx context.Context) (int, error) {
			rows, err := pool.Query(ctx, query, args...)
			if err != nil {
				return 0, err
			}
			n, bytes, _, err := scanEvents(rows)
			if err != nil {
				return 0, err
			}
			return checkCount(n, want, bytes)
		}}, nil
	}}
}

// pagedRawReadVariant runs ReadAll's page query (EventListAll: 1000 rows
// per round trip, keyset on the position, safe horizon) from raw pgx: the
// cost of paging without the Go library around it.
func pagedRawReadVariant(pool *pgxpool.Pool, want int) variant {
	return variant{name: "ReadAll's page query (1000 rows) from raw pgx", start: func(context.Context, string, int) ([]func(context.Context) (int, error), error) {
		return []func(context.Context) (int, error){func(ctx context.Context) (int, error) {
			var after conduit.Position
			total, bytes := 0, 0
			for {
				rows, err := pool.Query(ctx, pageQuery, int64(after.TransactionID), after.GlobalPosition, 1000)
				if err != nil {
					return 0, err
				}
				n, b, last, err := scanEvents(rows)
				if err != nil {
					return 0, err
				}
				total, bytes = total+n, bytes+b
				if n < 1000 {
					return checkCount(total, want, bytes)
				}
				after = last.Position
			}
		}}, nil
	}}
}

func scanEvents(rows pgx.Rows) (n, bytes int, last conduit.Event, err error) {
	defer rows.Close()
	var e conduit.Event
	for rows.Next() {
		if err := rows.Scan(&e.Position.GlobalPosition, &e.Position.TransactionID, &e.StreamID, &e.StreamVersion,
			&e.ID, &e.Type, &e.Data, &e.Metadata, &e.RecordedAt); err != nil {
			return 0, 0, e, err
		}
		n++
		bytes += len(e.Data)
	}
	return n, bytes, e, rows.Err()
}

func checkCount(n, want, bytes int) (int, error) {
	if n != want || bytes == 0 {
		return 0, fmt.Errorf("read %d events (%d bytes of data), want %d", n, bytes, want)
	}
	return n, nil
}
