package main

import (
	"context"
	"fmt"
	"log"
	"slices"
	"time"
)

// statusLag is how far behind the status workload's projection is.
const statusLag = 10_000_000

// benchStatus times conduit.projection_status() for a projection
// statusLag events behind, against migration 2's version (which counts
// every event past the checkpoint), kept as conduit.projection_status_00002.
// The events are made by one INSERT … SELECT generate_series (ids in
// order, so the load takes about a minute rather than ten).
func benchStatus(ctx context.Context, srv *server, out *results) error {
	db, err := srv.freshDB(ctx, "status")
	if err != nil {
		return err
	}
	defer db.drop()
	pool, err := db.pool(ctx, 1)
	if err != nil {
		return err
	}
	defer pool.Close()
	begin := time.Now()
	for _, sql := range []string{
		`INSERT INTO conduit.projections (name) VALUES ('behind')`,
		fmt.Sprintf(`INSERT INTO conduit.events (stream_id, stream_version, event_id, event_type, data)
		SELECT 'bulk-' || (i / 1000), i %% 1000 + 1, lpad(to_hex(i), 32, '0')::uuid, 'bulk', '{"n":1}'
		  FROM generate_series(0, %d - 1) AS i`, statusLag),
		`VACUUM ANALYZE conduit.events`,
	} {
		if _, err := pool.Exec(ctx, sql); err != nil {
			return fmt.Errorf("load %d events: %w", statusLag, err)
		}
	}
	log.Printf("loaded %d events in %s", statusLag, time.Since(begin).Round(time.Second))

	timeQuery := func(sql string, runs int) ([]time.Duration, int64, error) {
		var out []time.Duration
		var lag int64
		for range runs {
			t := time.Now()
			if err := pool.QueryRow(ctx, sql).Scan(&lag); err != nil {
				return nil, 0, err
			}
			out = append(out, time.Since(t))
		}
		return out, lag, nil
	}
	const current = `SELECT lag_events FROM conduit.projection_status() WHERE name = 'behind'`
	cur, lag, err := timeQuery(current, 11)
	if err != nil {
		return err
	}
	old, oldLag, err := timeQuery(`SELECT lag_events FROM conduit.projection_status_00002() WHERE name = 'behind'`, 3)
	if err != nil {
		return err
	}
	out.status = append(out.status,
		statusRow{name: fmt.Sprintf("conduit.projection_status(), %s events of lag (reports %d, estimated)", rate(statusLag), lag),
			elapsed: cur, target: 50 * time.Millisecond},
		statusRow{name: fmt.Sprintf("baseline: migration 2's projection_status, counting every event (reports %d)", oldLag),
			elapsed: old})
	return nil
}

// statusRow is a timed status query; target 0: a baseline.
type statusRow struct {
	name    string
	elapsed []time.Duration
	target  time.Duration
}

func (s statusRow) median() time.Duration {
	d := slices.Clone(s.elapsed)
	slices.Sort(d)
	return d[len(d)/2]
}

func (s statusRow) met() bool { return s.target == 0 || s.median() <= s.target }
