package conduit_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

// offlineStore returns a Store on a pool that never connects: for what
// must not touch the database.
func offlineStore(t testing.TB) *conduit.Store {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/offline?connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store, err := conduit.NewStore(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	return store
}

// Every numeric field of ProjectorConfig is range-checked: zero means the
// default, values outside the documented range are refused with an error
// naming the field. BatchSize 1<<31 and 1<<32 once became a negative LIMIT
// and LIMIT 0 after the conversion to int32.
func TestProjectorConfigRanges(t *testing.T) {
	t.Parallel()
	store := offlineStore(t)
	type tc struct {
		field string
		cfg   conduit.ProjectorConfig
		ok    bool
	}
	var cases []tc
	add := func(field string, ok bool, cfgs ...conduit.ProjectorConfig) {
		for _, c := range cfgs {
			cases = append(cases, tc{field, c, ok})
		}
	}
	add("BatchSize", true, conduit.ProjectorConfig{BatchSize: 0}, conduit.ProjectorConfig{BatchSize: 1},
		conduit.ProjectorConfig{BatchSize: 100_000})
	add("BatchSize", false, conduit.ProjectorConfig{BatchSize: -1}, conduit.ProjectorConfig{BatchSize: 100_001},
		conduit.ProjectorConfig{BatchSize: math.MaxInt32}, conduit.ProjectorConfig{BatchSize: math.MaxInt})
	if math.MaxInt > math.MaxInt32 { // a 64-bit int
		big := int64(1) << 31
		add("BatchSize", false, conduit.ProjectorConfig{BatchSize: int(big)}, conduit.ProjectorConfig{BatchSize: int(big << 1)})
	}
	add("LeaseDuration", true, conduit.ProjectorConfig{LeaseDuration: 0},
		conduit.ProjectorConfig{LeaseDuration: 100 * time.Millisecond}, conduit.ProjectorConfig{LeaseDuration: time.Hour})
	add("LeaseDuration", false, conduit.ProjectorConfig{LeaseDuration: -time.Second},
		conduit.ProjectorConfig{LeaseDuration: 99 * time.Millisecond}, conduit.ProjectorConfig{LeaseDuration: time.Hour + 1})
	add("PollInterval", true, conduit.ProjectorConfig{PollInterval: 0},
		conduit.ProjectorConfig{PollInterval: time.Millisecond}, conduit.ProjectorConfig{PollInterval: time.Hour})
	add("PollInterval", false, conduit.ProjectorConfig{PollInterval: -1},
		conduit.ProjectorConfig{PollInterval: 5}, // 5 ns: a bare number is not milliseconds
		conduit.ProjectorConfig{PollInterval: time.Hour + 1})
	add("MaxAttempts", true, conduit.ProjectorConfig{MaxAttempts: 0}, conduit.ProjectorConfig{MaxAttempts: 1},
		conduit.ProjectorConfig{MaxAttempts: 1000})
	add("MaxAttempts", false, conduit.ProjectorConfig{MaxAttempts: -1}, conduit.ProjectorConfig{MaxAttempts: 1001},
		conduit.ProjectorConfig{MaxAttempts: math.MaxInt})
	add("RetryBackoff", true, conduit.ProjectorConfig{RetryBackoff: 0},
		conduit.ProjectorConfig{RetryBackoff: time.Millisecond}, conduit.ProjectorConfig{RetryBackoff: time.Minute})
	add("RetryBackoff", false, conduit.ProjectorConfig{RetryBackoff: -1},
		conduit.ProjectorConfig{RetryBackoff: time.Millisecond - 1}, conduit.ProjectorConfig{RetryBackoff: time.Minute + 1},
		conduit.ProjectorConfig{RetryBackoff: math.MaxInt64})
	add("StalledRetryInterval", true, conduit.ProjectorConfig{StalledRetryInterval: 0},
		conduit.ProjectorConfig{StalledRetryInterval: time.Millisecond}, conduit.ProjectorConfig{StalledRetryInterval: 24 * time.Hour})
	add("StalledRetryInterval", false, conduit.ProjectorConfig{StalledRetryInterval: -1},
		conduit.ProjectorConfig{StalledRetryInterval: time.Millisecond - 1},
		conduit.ProjectorConfig{StalledRetryInterval: 24*time.Hour + 1})
	add("HandlerTimeout", true, conduit.ProjectorConfig{HandlerTimeout: 0},
		conduit.ProjectorConfig{HandlerTimeout: 10 * time.Millisecond}, conduit.ProjectorConfig{HandlerTimeout: time.Hour})
	add("HandlerTimeout", false, conduit.ProjectorConfig{HandlerTimeout: -1},
		conduit.ProjectorConfig{HandlerTimeout: 10*time.Millisecond - 1}, conduit.ProjectorConfig{HandlerTimeout: time.Hour + 1})
	add("Poison", false, conduit.ProjectorConfig{Poison: conduit.PoisonPark + 1})

	for _, c := range cases {
		name := fmt.Sprintf("%s/%+v", c.field, c.cfg)
		_, err := conduit.NewProjector(store, &ledger{name: "ledger"}, &c.cfg)
		switch {
		case c.ok && err != nil:
			t.Errorf("%s: refused: %v", name, err)
		case !c.ok && err == nil:
			t.Errorf("%s: accepted", name)
		case !c.ok:
			var ce *conduit.ConfigError
			if !errors.As(err, &ce) || !errors.Is(err, conduit.ErrInvalidConfig) ||
				ce.Field != "ProjectorConfig."+c.field || !strings.Contains(err.Error(), ce.Field) {
				t.Errorf("%s: error %v, want a *ConfigError naming the field", name, err)
			}
		}
	}
}

// A projection's retries of an event wait RetryBackoff, doubled per failure
// up to 30 times RetryBackoff, with jitter: between half and the whole of
// that. It once shifted RetryBackoff by the attempt count: no jitter, no
// cap, and past about 38 attempts an overflow into negative or zero waits.
func TestProjectorRetryWaitJitteredAndCapped(t *testing.T) {
	t.Parallel()
	for _, backoff := range []time.Duration{time.Millisecond, conduit.RetryBackoffDefault, conduit.RetryBackoffLimit} {
		cfg := &conduit.ProjectorConfig{RetryBackoff: backoff, MaxAttempts: conduit.MaxAttemptsLimit}
		capped := 30 * backoff
		distinct := map[time.Duration]bool{}
		for attempt := 1; attempt <= conduit.MaxAttemptsLimit; attempt++ {
			wait, err := conduit.RetryWait(cfg, attempt)
			if err != nil {
				t.Fatal(err)
			}
			step := capped
			if attempt <= 5 { // 1, 2, 4, 8, 16 times backoff; then the cap
				step = backoff << (attempt - 1)
			}
			if wait < step/2 || wait > step {
				t.Fatalf("RetryBackoff %s, attempt %d: wait %s, want %s to %s", backoff, attempt, wait, step/2, step)
			}
			if attempt > 5 {
				distinct[wait] = true
			}
		}
		if len(distinct) < 2 {
			t.Fatalf("RetryBackoff %s: the capped waits are all %v: no jitter", backoff, distinct)
		}
		if wait, _ := conduit.RetryWait(cfg, 100); wait < 0 || wait > capped {
			t.Fatalf("RetryBackoff %s, attempt 100: wait %s, want 0 to the cap %s", backoff, wait, capped)
		}
	}
}
