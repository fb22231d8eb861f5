package conduit_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/conduit-es/conduit"
)

type account struct {
	Opened  bool
	Balance int
	Seen    []int64 // versions folded, in order
}

type deposited struct {
	Amount int `json:"amount"`
}

var accounts = conduit.Entity[account]{
	Initial: func() account { return account{Seen: []int64{}} },
	Evolve: func(a account, e conduit.Event) (account, error) {
		a.Seen = append(a.Seen, e.StreamVersion)
		switch e.Type {
		case "opened":
			a.Opened = true
		case "deposited":
			var d deposited
			if err := json.Unmarshal(e.Data, &d); err != nil {
				return a, err
			}
			a.Balance += d.Amount
		}
		return a, nil
	},
}

func deposit(t *testing.T, amount int) conduit.EventData {
	return mustEvent(t, "deposited", deposited{Amount: amount})
}

func TestEntityLoad(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, _ := newStore(t, nil)

	a, v, err := accounts.Load(ctx, store, "acct")
	if err != nil || v != 0 || a.Opened || a.Seen == nil {
		t.Fatalf("empty stream: %+v v%d %v (Initial not used?)", a, v, err)
	}
	if _, err := store.Append(ctx, "acct", conduit.NoStream, mustEvent(t, "opened", struct{}{}), deposit(t, 10), deposit(t, 5)); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, "other", conduit.NoStream, deposit(t, 1000)); err != nil {
		t.Fatal(err)
	}
	a, v, err = accounts.Load(ctx, store, "acct")
	if err != nil || v != 3 || !a.Opened || a.Balance != 15 || !slices.Equal(a.Seen, []int64{1, 2, 3}) {
		t.Fatalf("Load = %+v v%d %v", a, v, err)
	}

	// An Evolve error names the stream and version and wraps the cause.
	if _, err := store.Append(ctx, "acct", conduit.Exactly(3), conduit.EventData{Type: "deposited", Data: json.RawMessage(`{"amount":"lots"}`)}); err != nil {
		t.Fatal(err)
	}
	_, _, err = accounts.Load(ctx, store, "acct")
	var ute *json.UnmarshalTypeError
	if !errors.As(err, &ute) {
		t.Fatalf("Load with a bad event: err = %v", err)
	}

	// The zero S without Initial; Evolve is required.
	plain := conduit.Entity[int]{Evolve: func(n int, _ conduit.Event) (int, error) { return n + 1, nil }}
	if n, v, err := plain.Load(ctx, store, "other"); err != nil || n != 1 || v != 1 {
		t.Fatalf("Load without Initial = %d v%d %v", n, v, err)
	}
	if _, _, err := (conduit.Entity[int]{}).Load(ctx, store, "other"); err == nil {
		t.Fatal("Load without Evolve succeeded")
	}
}

func TestEntityUpdate(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, _ := newStore(t, nil)

	// First update of a new stream: decided against version 0.
	res, err := accounts.Update(ctx, store, "acct", func(a account) ([]conduit.EventData, error) {
		if a.Opened {
			return nil, errors.New("already open")
		}
		return []conduit.EventData{mustEvent(t, "opened", struct{}{}), deposit(t, 10)}, nil
	})
	if err != nil || res.Version != 2 {
		t.Fatalf("Update = %+v, %v", res, err)
	}

	// A concurrent writer gets in between the load and the append, the
	// first time only: Update reloads and decides again on the new state.
	var states []account
	res, err = accounts.Update(ctx, store, "acct", func(a account) ([]conduit.EventData, error) {
		states = append(states, a)
		if len(states) == 1 {
			if _, err := store.Append(ctx, "acct", conduit.Any, deposit(t, 100)); err != nil {
				return nil, err
			}
		}
		return []conduit.EventData{deposit(t, a.Balance)}, nil // double the balance
	})
	if err != nil || res.Version != 4 || res.Duplicate {
		t.Fatalf("Update after a conflict = %+v, %v", res, err)
	}
	if len(states) != 2 || states[0].Balance != 10 || states[1].Balance != 110 {
		t.Fatalf("decide saw %+v, want balances 10 then 110", states)
	}
	a, v, err := accounts.Load(ctx, store, "acct")
	if err != nil || v != 4 || a.Balance != 220 {
		t.Fatalf("after Update: %+v v%d %v", a, v, err)
	}

	// A decision of no events appends nothing and reports the version.
	res, err = accounts.Update(ctx, store, "acct", func(account) ([]conduit.EventData, error) { return nil, nil })
	if err != nil || res.Version != 4 {
		t.Fatalf("empty decision = %+v, %v", res, err)
	}
	if v, _ := store.StreamVersion(ctx, "acct"); v != 4 {
		t.Fatalf("empty decision appended: version %d", v)
	}

	// decide's error comes back as is, and nothing is appended.
	errNo := errors.New("insufficient funds")
	if _, err := accounts.Update(ctx, store, "acct", func(account) ([]conduit.EventData, error) { return nil, errNo }); !errors.Is(err, errNo) {
		t.Fatalf("decide error: %v", err)
	}

	// Always beaten: MaxAttempts tries, then the conflict.
	limited := accounts
	limited.MaxAttempts = 3
	tries := 0
	_, err = limited.Update(ctx, store, "acct", func(account) ([]conduit.EventData, error) {
		tries++
		if _, err := store.Append(ctx, "acct", conduit.Any, deposit(t, 1)); err != nil {
			return nil, err
		}
		return []conduit.EventData{deposit(t, 1000)}, nil
	})
	var vc *conduit.VersionConflictError
	if !errors.As(err, &vc) || !errors.Is(err, conduit.ErrVersionConflict) || tries != 3 {
		t.Fatalf("exhausted: err = %v after %d tries, want a conflict after 3", err, tries)
	}
	if a, v, _ := accounts.Load(ctx, store, "acct"); v != 7 || a.Balance != 223 {
		t.Fatalf("exhausted Update wrote its own events: %+v v%d", a, v)
	}

	// The default bound.
	tries = 0
	_, err = accounts.Update(ctx, store, "acct", func(account) ([]conduit.EventData, error) {
		tries++
		if _, err := store.Append(ctx, "acct", conduit.Any, deposit(t, 0)); err != nil {
			return nil, err
		}
		return []conduit.EventData{deposit(t, 0)}, nil
	})
	if !errors.Is(err, conduit.ErrVersionConflict) || tries != conduit.EntityMaxAttemptsDefault {
		t.Fatalf("default bound: err = %v after %d tries", err, tries)
	}
}

// UpdateTx decides inside the caller's transaction: a conflict with a
// concurrent writer leaves the transaction usable, UpdateTx reloads within
// it, and the decision commits with the caller's other writes.
func TestEntityUpdateTx(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	if _, err := store.Append(ctx, "acct", conduit.NoStream, mustEvent(t, "opened", struct{}{}), deposit(t, 10)); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE audit (note text)`); err != nil {
		t.Fatal(err)
	}
	var states []account
	err := store.InTx(ctx, func(tx pgx.Tx) error {
		// (Had tx written before the concurrent append, its append would be
		// refused with ErrTransactionOrder: the stream's order must be the
		// log's, ordered by transaction id.)
		res, err := accounts.UpdateTx(ctx, store, tx, "acct", func(a account) ([]conduit.EventData, error) {
			states = append(states, a)
			if len(states) == 1 {
				if _, err := store.Append(ctx, "acct", conduit.Any, deposit(t, 100)); err != nil {
					return nil, err
				}
			}
			return []conduit.EventData{deposit(t, a.Balance)}, nil
		})
		if err != nil || res.Version != 4 {
			return fmt.Errorf("UpdateTx = %+v, %w", res, err)
		}
		// The transaction sees its own append.
		if a, v, err := accounts.LoadTx(ctx, store, tx, "acct"); err != nil || v != 4 || a.Balance != 220 {
			return fmt.Errorf("LoadTx in the transaction: %+v v%d %w", a, v, err)
		}
		_, err = tx.Exec(ctx, `INSERT INTO audit VALUES ('doubled')`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(states) != 2 || states[0].Balance != 10 || states[1].Balance != 110 {
		t.Fatalf("decide saw %+v, want balances 10 then 110", states)
	}
	var notes int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM audit`).Scan(&notes); err != nil || notes != 1 {
		t.Fatalf("audit rows %d, %v", notes, err)
	}
	if a, v, err := accounts.Load(ctx, store, "acct"); err != nil || v != 4 || a.Balance != 220 {
		t.Fatalf("after commit: %+v v%d %v", a, v, err)
	}
}

// Entity.MaxAttempts has a range like every other setting.
func TestEntityMaxAttemptsRange(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, _ := newStore(t, nil)
	none := func(account) ([]conduit.EventData, error) { return nil, nil }
	for _, n := range []int{-1, conduit.EntityMaxAttemptsLimit + 1} {
		en := accounts
		en.MaxAttempts = n
		_, err := en.Update(ctx, store, "acct", none)
		var ce *conduit.ConfigError
		if !errors.As(err, &ce) || ce.Field != "Entity.MaxAttempts" {
			t.Errorf("MaxAttempts %d: err = %v, want a *ConfigError", n, err)
		}
	}
	en := accounts
	en.MaxAttempts = conduit.EntityMaxAttemptsLimit
	if _, err := en.Update(ctx, store, "acct", none); err != nil {
		t.Errorf("MaxAttempts %d: %v", en.MaxAttempts, err)
	}
}
