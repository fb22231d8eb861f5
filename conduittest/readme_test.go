package conduittest_test

import (
	"bytes"
	"os"
	"testing"

	"github.com/conduit-es/conduit"
)

// The README's test-kit snippet, verbatim between the markers, so that it
// compiles and runs: a user's test of an asynchronous projection, with no
// sleeps.

// README begin
func TestOrdersProjection(t *testing.T) {
	t.Parallel()
	store := shop.NewStore(t, nil) // a fresh database: Conduit's schema and the shop's tables
	projector, err := conduit.NewProjector(store, orders(), nil)
	if err != nil {
		t.Fatal(err)
	}

	placed, _ := conduit.NewEvent("order_placed", map[string]string{"customer": "ada"})
	if _, err := store.Append(t.Context(), "order-1", conduit.NoStream, placed); err != nil {
		t.Fatal(err)
	}
	if err := projector.CatchUp(t.Context()); err != nil { // applies everything committed so far
		t.Fatal(err)
	}

	var customer string
	if err := store.Pool().QueryRow(t.Context(), `SELECT customer FROM shop.orders WHERE id = 'order-1'`).Scan(&customer); err != nil || customer != "ada" {
		t.Fatalf("shop.orders: %q, %v", customer, err)
	}
}

// README end

// The snippet in README.md is this file's, byte for byte.
func TestReadmeSnippetIsThisTest(t *testing.T) {
	this, err := os.ReadFile("readme_test.go")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	begin, end := []byte("// README begin\n"), []byte("\n// README end")
	i, j := bytes.Index(this, begin), bytes.Index(this, end)
	snippet := bytes.Trim(this[i+len(begin):j], "\n")
	if !bytes.Contains(readme, snippet) {
		t.Fatal("README.md's test-kit snippet differs from TestOrdersProjection in readme_test.go: copy it over")
	}
}
