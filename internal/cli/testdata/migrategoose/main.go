// Command migrategoose is README's "Migrations in CI" program for goose,
// verbatim between the markers (migrate_ci_test.go checks both).
package main

import (
	"context"
	"database/sql"
	"log"
	"os"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver of database/sql
	"github.com/pressly/goose/v3"

	"github.com/conduit-es/conduit"
)

// README begin
func main() {
	if err := migrate(context.Background(), os.Getenv("DATABASE_URL")); err != nil {
		log.Fatal(err)
	}
}

func migrate(ctx context.Context, url string) error {
	db, err := sql.Open("pgx", url)
	if err != nil {
		return err
	}
	defer db.Close()
	// goose creates its version table before the first migration: create the schema that holds it.
	if _, err := db.ExecContext(ctx, "CREATE SCHEMA IF NOT EXISTS conduit"); err != nil {
		return err
	}
	conduitMigrations, err := goose.NewProvider(goose.DialectPostgres, db, conduit.Migrations(),
		goose.WithTableName(conduit.MigrationTable))
	if err != nil {
		return err
	}
	if _, err := conduitMigrations.Up(ctx); err != nil {
		return err
	}
	// ...then your own migrations, with goose's default table.
	return nil
}

// README end
