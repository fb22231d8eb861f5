package pgtest

import (
	"context"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

func TestWithDatabase(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, name, want string }{
		{"postgres://u:p@h:5433/db?sslmode=disable", "x", "postgres://u:p@h:5433/x?sslmode=disable"},
		{"postgres://u@h", "x", "postgres://u@h/x"},
		{"postgres://h?sslmode=require", "x", "postgres://h/x?sslmode=require"},
		{"postgresql://h1:5432,h2:5433/db", "x", "postgresql://h1:5432,h2:5433/x"},
		{"postgres:///postgres", "x", "postgres:///x"},
		{"postgres:///postgres?host=/var/run/postgresql&port=5433", "x", "postgres:///x?host=/var/run/postgresql&port=5433"},
		{"postgres://u:p?w@h/db", "x", "postgres://u:p?w@h/x"}, // libpq: '@' before the first '/' ends the user info
		{"host=/tmp user=u dbname=db", "x", "host=/tmp user=u dbname=db dbname='x'"},
		{"", "x", "dbname='x'"},
		{"host=h", `it's`, `host=h dbname='it\'s'`},
	} {
		got := withDatabase(tc.in, tc.name)
		if got != tc.want {
			t.Errorf("withDatabase(%q, %q) = %q, want %q", tc.in, tc.name, got, tc.want)
			continue
		}
		before, err := pgx.ParseConfig(tc.in)
		if err != nil {
			t.Fatalf("parse %q: %v", tc.in, err)
		}
		after, err := pgx.ParseConfig(got)
		if err != nil {
			t.Fatalf("parse %q: %v", got, err)
		}
		if after.Database != tc.name || after.Host != before.Host || after.Port != before.Port ||
			after.User != before.User || after.Password != before.Password || len(after.Fallbacks) != len(before.Fallbacks) {
			t.Errorf("%q parses to %s@%s:%d/%s, want %s@%s:%d/%s", got,
				after.User, after.Host, after.Port, after.Database, before.User, before.Host, before.Port, tc.name)
		}
	}
}

// Templates with the same files but different keys are different
// templates, and URLFor reaches the database NewDBFrom made.
func TestNewDBFromKey(t *testing.T) {
	t.Parallel()
	files := fstest.MapFS{"001_table.sql": {Data: []byte("-- no-op: Migrate below creates the table")}}
	for _, key := range []string{"alpha", "beta"} {
		t.Run(key, func(t *testing.T) {
			t.Parallel()
			name := NewDBFrom(t, Template{
				Migrations: files,
				Key:        key,
				Migrate: func(ctx context.Context, pool *pgxpool.Pool) error {
					_, err := pool.Exec(ctx, "CREATE TABLE "+pgx.Identifier{key}.Sanitize()+" ()")
					return err
				},
			})
			pool := Connect(t, URLFor(t, name))
			var db string
			var alpha, beta bool
			err := pool.QueryRow(context.Background(),
				"SELECT current_database(), to_regclass('alpha') IS NOT NULL, to_regclass('beta') IS NOT NULL").Scan(&db, &alpha, &beta)
			if err != nil {
				t.Fatal(err)
			}
			if db != name {
				t.Errorf("connected to %s, want %s", db, name)
			}
			if alpha != (key == "alpha") || beta != (key == "beta") {
				t.Errorf("tables alpha %v, beta %v in the %s template's clone", alpha, beta, key)
			}
		})
	}
}
