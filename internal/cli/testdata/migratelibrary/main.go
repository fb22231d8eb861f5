// Command migratelibrary is README's "Migrations in CI" program for the
// library's Migrate, verbatim between the markers (migrate_ci_test.go
// checks both).
package main

import (
	"context"
	"log"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

// README begin
func main() {
	if err := migrate(context.Background(), os.Getenv("DATABASE_URL")); err != nil {
		log.Fatal(err)
	}
}

func migrate(ctx context.Context, url string) error {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()
	return conduit.Migrate(ctx, pool) // under its advisory lock: deploys migrating at once are safe
}

// README end
