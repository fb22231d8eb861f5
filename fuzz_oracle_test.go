package conduit_test

// Oracles for the fuzz targets (fuzz_test.go), written apart from the
// library's validation (event.go) so that each checks the other: what
// PostgreSQL's jsonb can store, what the documented limits allow, and JSON
// equality as jsonb sees it. FuzzAppend checks jsonbRefusal against the
// server itself.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

// validStreamID is the documented rule: 1 to MaxStreamIDLength bytes of
// UTF-8 without NUL.
func validStreamID(s string) bool {
	return s != "" && len(s) <= conduit.MaxStreamIDLength && utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}

// validEventType is the documented rule: 1 to MaxEventTypeLength bytes of
// UTF-8 without NUL.
func validEventType(s string) bool {
	return s != "" && len(s) <= conduit.MaxEventTypeLength && utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}

// validExpected reports whether v is Any, NoStream, StreamExists or
// Exactly(n) with n >= 0.
func validExpected(v conduit.ExpectedVersion) bool {
	return v == conduit.Any || v == conduit.NoStream || v == conduit.StreamExists || v >= 0
}

// expectationHolds reports whether an append expecting v may go to a stream
// at version version.
func expectationHolds(v conduit.ExpectedVersion, version int64) bool {
	switch v {
	case conduit.Any:
		return true
	case conduit.NoStream:
		return version == 0
	case conduit.StreamExists:
		return version > 0
	}
	return int64(v) == version
}

// jsonMaxDepth is encoding/json's nesting limit, which the library inherits
// through json.Valid. PostgreSQL's limit (max_stack_depth) is deeper: about
// 15,000 levels of arrays with the default 2MB.
const jsonMaxDepth = 10_000

var (
	// jsonStringLiteral matches JSON string literals, scanning valid JSON
	// from the left: outside strings valid JSON has no quotes.
	jsonStringLiteral = regexp.MustCompile(`(?s)"(?:[^"\\]|\\.)*"`)
	// jsonEscape matches one escape sequence inside a string literal.
	jsonEscape = regexp.MustCompile(`(?s)\\(?:u([0-9a-fA-F]{4})|.)`)
)

// jsonbRefusal returns why PostgreSQL's jsonb cannot store b, or "". It
// follows PostgreSQL 15's JSON lexer and numeric input: text must be UTF-8;
// \u0000 cannot be converted to text; a \u escape of a high surrogate must be
// followed at once by one of a low surrogate, and a low surrogate needs a high
// one before it; a number must fit numeric (an exponent under INT_MAX/2 in
// size, at most 16,383 digits after the decimal point once the exponent is
// applied, and a leading digit below 10^131072). It adds encoding/json's
// nesting limit (jsonMaxDepth), which the library inherits; PostgreSQL's own
// is deeper.
func jsonbRefusal(b []byte) string {
	if !utf8.Valid(b) {
		return "not UTF-8"
	}
	if !json.Valid(b) {
		return "not JSON, or nested deeper than encoding/json allows"
	}
	if bytes.Contains(b, []byte(`\u`)) { // else no string has a \u escape
		for _, lit := range jsonStringLiteral.FindAll(b, -1) {
			if reason := stringLiteralRefusal(lit); reason != "" {
				return reason
			}
		}
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return ""
		}
		if err != nil {
			return "decode: " + err.Error() // json.Valid said yes: a bug in this oracle
		}
		if n, ok := tok.(json.Number); ok {
			if reason := numericRefusal(string(n)); reason != "" {
				return reason
			}
		}
	}
}

// stringLiteralRefusal applies jsonb's rules for \u escapes to one string
// literal, quotes included.
func stringLiteralRefusal(lit []byte) string {
	highEnd := -1 // where the escape of a pending high surrogate ends
	for _, m := range jsonEscape.FindAllSubmatchIndex(lit, -1) {
		start, end := m[0], m[1]
		if m[2] < 0 { // \n, \", \\, ...
			if highEnd >= 0 {
				return "high surrogate not followed by a low one"
			}
			continue
		}
		cp, _ := strconv.ParseUint(string(lit[m[2]:m[3]]), 16, 32)
		switch {
		case cp == 0:
			return `\u0000`
		case cp >= 0xD800 && cp <= 0xDBFF:
			if highEnd >= 0 {
				return "high surrogate after a high surrogate"
			}
			highEnd = end
		case cp >= 0xDC00 && cp <= 0xDFFF:
			if highEnd != start { // none pending, or text in between
				return "low surrogate without a high one just before"
			}
			highEnd = -1
		default:
			if highEnd >= 0 {
				return "high surrogate not followed by a low one"
			}
		}
	}
	if highEnd >= 0 {
		return "high surrogate at the end of a string"
	}
	return ""
}

// jsonNumberSyntax splits a JSON number literal.
var jsonNumberSyntax = regexp.MustCompile(`^(-?)(0|[1-9][0-9]*)(?:\.([0-9]+))?(?:[eE]([+-]?[0-9]+))?$`)

// numericParts is a JSON number as PostgreSQL's numeric reads it.
type numericParts struct {
	neg bool
	// digits are the significant digits, without leading or trailing
	// zeros; empty for zero.
	digits string
	// lead is the decimal exponent of the first significant digit.
	lead int64
	// scale is the display scale: digits after the point once the
	// exponent is applied (numeric keeps trailing zeros).
	scale int64
	// exp is the exponent, saturated as strtol does.
	exp int64
}

func parseNumeric(lit string) (numericParts, bool) {
	m := jsonNumberSyntax.FindStringSubmatch(lit)
	if m == nil {
		return numericParts{}, false
	}
	p := numericParts{neg: m[1] == "-"}
	intDigits, fracDigits := m[2], m[3]
	if m[4] != "" {
		e, err := strconv.ParseInt(m[4], 10, 64)
		if err != nil { // out of range: strtol saturates
			e = int64(1) << 62
			if m[4][0] == '-' {
				e = -e
			}
		}
		p.exp = e
	}
	all := intDigits + fracDigits
	first := strings.IndexFunc(all, func(r rune) bool { return r != '0' })
	p.scale = max(0, int64(len(fracDigits))-p.exp)
	if first < 0 {
		return p, true // zero
	}
	p.digits = strings.TrimRight(all[first:], "0")
	p.lead = int64(len(intDigits)-1-first) + p.exp
	return p, true
}

// numericRefusal says why numeric cannot hold the JSON number lit, or "".
func numericRefusal(lit string) string {
	const (
		intMaxHalf = 1<<31/2 - 1 // INT_MAX / 2
		dscaleMax  = 0x3FFF      // NUMERIC_DSCALE_MAX
		weightMax  = 1<<15 - 1   // NUMERIC_WEIGHT_MAX, in base-10000 digits
	)
	p, ok := parseNumeric(lit)
	switch {
	case !ok:
		return "number syntax"
	case p.exp >= intMaxHalf || p.exp <= -intMaxHalf:
		return "numeric: exponent out of range"
	case p.scale > dscaleMax:
		return "numeric: more than 16383 digits after the point"
	case p.digits != "" && floorDiv4(p.lead) > weightMax:
		return "numeric: 10^131072 or more"
	}
	return ""
}

func floorDiv4(n int64) int64 {
	if n >= 0 {
		return n / 4
	}
	return -((-n + 3) / 4)
}

// jsonDepth returns the deepest nesting of arrays and objects in valid JSON.
func jsonDepth(b []byte) int {
	depth, deepest, inString := 0, 0, false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case inString && c == '\\':
			i++
		case c == '"':
			inString = !inString
		case inString:
		case c == '[' || c == '{':
			depth++
			deepest = max(deepest, depth)
		case c == ']' || c == '}':
			depth--
		}
	}
	return deepest
}

// jsonEqual reports whether a and b are the same JSON value as jsonb sees
// it: object keys unordered, the last of duplicate keys kept, strings
// compared decoded, numbers compared by value (jsonb prints 1e3 as 1000).
func jsonEqual(a, b []byte) bool {
	va, err := decodeJSON(a)
	if err != nil {
		return false
	}
	vb, err := decodeJSON(b)
	if err != nil {
		return false
	}
	return jsonValuesEqual(va, vb)
}

func decodeJSON(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one JSON value")
	}
	return v, nil
}

func jsonValuesEqual(a, b any) bool {
	switch x := a.(type) {
	case json.Number:
		y, ok := b.(json.Number)
		if !ok {
			return false
		}
		px, okx := parseNumeric(string(x))
		py, oky := parseNumeric(string(y))
		if px.digits == "" && py.digits == "" {
			return okx && oky // zero; numeric has no -0
		}
		return okx && oky && px.neg == py.neg && px.digits == py.digits && px.lead == py.lead
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !jsonValuesEqual(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, vx := range x {
			vy, ok := y[k]
			if !ok || !jsonValuesEqual(vx, vy) {
				return false
			}
		}
		return true
	}
	return a == b // string, bool, nil
}

// pgJSONBRefusal asks the server whether jsonb can store b, sent as text as
// the library sends it: the server's error, or nil. Errors of other classes
// than data exceptions (22) and program limits (54: nesting too deep) fail
// the test.
func pgJSONBRefusal(t testing.TB, ctx context.Context, pool *pgxpool.Pool, b []byte) error {
	t.Helper()
	var ok bool
	err := pool.QueryRow(ctx, "SELECT $1::text::jsonb IS NOT NULL", string(b)).Scan(&ok)
	var pgErr *pgconn.PgError
	if err != nil && !(errors.As(err, &pgErr) && (strings.HasPrefix(pgErr.Code, "22") || strings.HasPrefix(pgErr.Code, "54"))) {
		t.Fatalf("ask the server about %.100q: %v", b, err)
	}
	return err
}

// errReachedDatabase is what stubTx answers every query with.
var errReachedDatabase = errors.New("stub transaction: the call reached the database")

// stubTx is a pgx.Tx that records the queries sent through it and fails
// each with errReachedDatabase: the public API's validation, tested without
// a server. Other methods panic (the embedded Tx is nil).
type stubTx struct {
	pgx.Tx
	queries [][]any // each query's arguments
}

func (s *stubTx) Query(_ context.Context, _ string, args ...any) (pgx.Rows, error) {
	s.queries = append(s.queries, args)
	return nil, errReachedDatabase
}

func (s *stubTx) QueryRow(_ context.Context, _ string, args ...any) pgx.Row {
	s.queries = append(s.queries, args)
	return errRow{}
}

func (s *stubTx) Exec(_ context.Context, _ string, args ...any) (pgconn.CommandTag, error) {
	s.queries = append(s.queries, args)
	return pgconn.CommandTag{}, errReachedDatabase
}

type errRow struct{}

func (errRow) Scan(...any) error { return errReachedDatabase }

// sentStrings reports whether one of a query's arguments is the list want.
func sentStrings(args []any, want []string) bool {
	for _, a := range args {
		if s, ok := a.([]string); ok && slices.Equal(s, want) {
			return true
		}
	}
	return false
}

// offlinePool returns a pool that never connects: no server is asked until
// a query runs through it, and the fuzz targets send theirs to stubTx.
func offlinePool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pcfg, err := pgxpool.ParseConfig("host=/nonexistent-conduit-fuzz dbname=none")
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// addCorpus adds the seed corpus files of another fuzz target with the same
// arguments (FuzzAppend's, for FuzzValidate), so the two share one set of
// interesting inputs. It reads the types those targets take, written as
// `go test -fuzz` writes them.
func addCorpus(f *testing.F, dir string) {
	f.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		f.Fatal(err)
	}
	for _, entry := range entries {
		b, err := os.ReadFile(filepath.Join(dir, entry.Name()))
		if err != nil {
			f.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) == 0 || lines[0] != "go test fuzz v1" {
			f.Fatalf("%s: not a seed corpus file", entry.Name())
		}
		var args []any
		for _, line := range lines[1:] {
			arg, err := parseCorpusValue(line)
			if err != nil {
				f.Fatalf("%s: %q: %v", entry.Name(), line, err)
			}
			args = append(args, arg)
		}
		f.Add(args...)
	}
}

// parseCorpusValue parses one line of a seed corpus file: string(...),
// []byte(...), int64(...) or byte(...).
func parseCorpusValue(line string) (any, error) {
	typ, lit, ok := strings.Cut(line, "(")
	if !ok || !strings.HasSuffix(lit, ")") {
		return nil, errors.New("not type(literal)")
	}
	lit = strings.TrimSuffix(lit, ")")
	switch typ {
	case "string":
		return strconv.Unquote(lit)
	case "[]byte":
		s, err := strconv.Unquote(lit)
		return []byte(s), err
	case "int64":
		return strconv.ParseInt(lit, 0, 64)
	case "byte", "uint8":
		if len(lit) < 2 || lit[0] != '\'' {
			n, err := strconv.ParseUint(lit, 0, 8)
			return uint8(n), err
		}
		r, _, tail, err := strconv.UnquoteChar(lit[1:len(lit)-1], '\'')
		if err == nil && (tail != "" || r > 0xFF) {
			err = errors.New("not one byte")
		}
		return uint8(r), err
	}
	return nil, errors.New("unsupported type " + typ)
}
