package dbgen

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/conduit-es/conduit/internal/pgtest"
)

// eventColumnsQuery selects one row of the events table's column types from
// parameters sent as text, so that every edge value goes through the
// server's own input and output functions.
const eventColumnsQuery = `SELECT $1::text::int8, $2::text::xid8, $3::text, $4::text::int8, $5::text::uuid,
	$6::text, $7::text::jsonb, $8::text::jsonb, $9::text::timestamptz`

type rowText [9]*string

func ptr(s string) *string { return &s }

func (r rowText) args() []any {
	out := make([]any, len(r))
	for i, v := range r {
		if v != nil {
			out[i] = *v
		}
	}
	return out
}

func edgeRows() map[string]rowText {
	row := func(edit func(*rowText)) rowText {
		r := rowText{ptr("1"), ptr("3"), ptr("stream-1"), ptr("1"), ptr(uuid.NewString()), ptr("registered"),
			ptr(`{"a": 1}`), nil, ptr("2026-11-30 12:34:56.789012+00")}
		edit(&r)
		return r
	}
	big := `{"big": "` + strings.Repeat("x", 1<<20) + `"}`
	return map[string]rowText{
		"plain": row(func(*rowText) {}),
		"max values": row(func(r *rowText) {
			r[0], r[1], r[3] = ptr("9223372036854775807"), ptr("18446744073709551615"), ptr("9223372036854775807")
		}),
		"zero and negative": row(func(r *rowText) { r[0], r[1], r[3] = ptr("-9223372036854775808"), ptr("0"), ptr("0") }),
		"empty texts":       row(func(r *rowText) { r[2], r[5] = ptr(""), ptr("") }),
		"unicode": row(func(r *rowText) {
			r[2], r[5], r[6] = ptr("流-é-😀"), ptr("événement"), ptr(`{"名前": "ü😀\n"}`)
		}),
		"zero uuid":             row(func(r *rowText) { r[4] = ptr(uuid.Nil.String()) }),
		"metadata empty":        row(func(r *rowText) { r[7] = ptr(`{}`) }),
		"metadata json null":    row(func(r *rowText) { r[7] = ptr(`null`) }),
		"data null":             row(func(r *rowText) { r[6] = nil }),
		"data scalar":           row(func(r *rowText) { r[6] = ptr(`"text"`) }),
		"large payloads":        row(func(r *rowText) { r[6], r[7] = ptr(big), ptr(big) }),
		"postgres epoch":        row(func(r *rowText) { r[8] = ptr("2000-01-01 00:00:00+00") }),
		"unix epoch":            row(func(r *rowText) { r[8] = ptr("1970-01-01 00:00:00+00") }),
		"before unix epoch":     row(func(r *rowText) { r[8] = ptr("1969-12-31 23:59:59.999999+00") }),
		"before postgres epoch": row(func(r *rowText) { r[8] = ptr("1999-12-31 23:59:59.000001+00") }),
		"earliest":              row(func(r *rowText) { r[8] = ptr("4713-11-24 00:00:00+00 BC") }),
		"latest":                row(func(r *rowText) { r[8] = ptr("294276-12-31 23:59:59.999999+00") }),
	}
}

// decodeAll decodes every row of rows with an EventDecoder, and reports
// whether it decoded from the wire.
func decodeAll(t *testing.T, rows pgx.Rows) ([]ConduitEvent, bool) {
	t.Helper()
	defer rows.Close()
	var (
		d   EventDecoder
		out []ConduitEvent
	)
	for rows.Next() {
		if out == nil {
			d.Start(rows.FieldDescriptions(), rows.Conn().TypeMap())
		}
		var e ConduitEvent
		if err := d.Decode(rows, &e); err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out, d.fast
}

func scanOne(t *testing.T, conn *pgx.Conn, mode pgx.QueryExecMode, args []any) ConduitEvent {
	t.Helper()
	var e ConduitEvent
	if err := conn.QueryRow(context.Background(), eventColumnsQuery, append([]any{mode}, args...)...).Scan(
		&e.GlobalPosition, &e.TransactionID, &e.StreamID, &e.StreamVersion,
		&e.EventID, &e.EventType, &e.Data, &e.Metadata, &e.RecordedAt); err != nil {
		t.Fatal(err)
	}
	return e
}

// TestEventDecoderEdgeValues: for each edge value, the decoder gives what
// rows.Scan gives, from the wire in the binary-result modes, and through
// Scan (its fallback) under the simple protocol, whose results are text.
func TestEventDecoderEdgeValues(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgtest.ServerURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	modes := []struct {
		mode pgx.QueryExecMode
		fast bool
	}{
		{pgx.QueryExecModeCacheStatement, true},
		{pgx.QueryExecModeCacheDescribe, true},
		{pgx.QueryExecModeDescribeExec, true},
		{pgx.QueryExecModeExec, false}, // text results
		{pgx.QueryExecModeSimpleProtocol, false},
	}
	for name, r := range edgeRows() {
		for _, m := range modes {
			t.Run(name+"/"+m.mode.String(), func(t *testing.T) {
				want := scanOne(t, conn, m.mode, r.args())
				rows, err := conn.Query(ctx, eventColumnsQuery, append([]any{m.mode}, r.args()...)...)
				if err != nil {
					t.Fatal(err)
				}
				got, fast := decodeAll(t, rows)
				if fast != m.fast {
					t.Errorf("decoded from the wire: %v, want %v", fast, m.fast)
				}
				if len(got) != 1 {
					t.Fatalf("%d rows", len(got))
				}
				if !reflect.DeepEqual(got[0], want) {
					t.Errorf("decoded\n%+.200v\nscanned\n%+.200v", got[0], want)
				}
				if (r[7] == nil) != (got[0].Metadata == nil) {
					t.Errorf("metadata %q for %v", got[0].Metadata, r[7])
				}
			})
		}
	}
}

// TestEventDecoderInfinity: an infinite timestamp is an error, as with Scan.
func TestEventDecoderInfinity(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgtest.ServerURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, inf := range []string{"infinity", "-infinity"} {
		r := edgeRows()["plain"]
		r[8] = ptr(inf)
		rows, err := conn.Query(ctx, eventColumnsQuery, r.args()...)
		if err != nil {
			t.Fatal(err)
		}
		var d EventDecoder
		if !rows.Next() {
			t.Fatal(rows.Err())
		}
		d.Start(rows.FieldDescriptions(), rows.Conn().TypeMap())
		var e ConduitEvent
		if err := d.Decode(rows, &e); err == nil {
			t.Errorf("%s: decoded %v, want an error", inf, e.RecordedAt)
		}
		rows.Close()
	}
}

// TestEventDecoderFallsBackToScan: a result that is not the events table's
// columns, or a connection that scans times in a location of its own, is
// scanned.
func TestEventDecoderFallsBackToScan(t *testing.T) {
	ctx := context.Background()
	cfg, err := pgx.ParseConfig(pgtest.ServerURL(t))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	args := edgeRows()["plain"].args()

	// A timestamp as text: the wrong type.
	rows, err := conn.Query(ctx, strings.Replace(eventColumnsQuery, "$9::text::timestamptz", "$9::text::timestamptz::text", 1), args...)
	if err != nil {
		t.Fatal(err)
	}
	rows.Next()
	var d EventDecoder
	d.Start(rows.FieldDescriptions(), rows.Conn().TypeMap())
	if d.fast {
		t.Error("decodes a text timestamp from the wire")
	}
	rows.Close()

	loc := time.FixedZone("test", 3600)
	conn.TypeMap().RegisterType(&pgtype.Type{Name: "timestamptz", OID: pgtype.TimestamptzOID,
		Codec: &pgtype.TimestamptzCodec{ScanLocation: loc}})
	rows, err = conn.Query(ctx, eventColumnsQuery, args...)
	if err != nil {
		t.Fatal(err)
	}
	got, fast := decodeAll(t, rows)
	if fast {
		t.Error("decodes from the wire despite a ScanLocation")
	}
	if len(got) != 1 || got[0].RecordedAt.Location() != loc {
		t.Errorf("decoded %+.100v, want the time in %v", got, loc)
	}
}

// TestDecodeJSONBBinary: a jsonb value in binary format (version byte, then
// the text), as the server sends it when asked.
func TestDecodeJSONBBinary(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgtest.ServerURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, in := range []string{`{}`, `{"名前": "😀"}`, `null`, `[1, 2.5, "x"]`} {
		res := conn.PgConn().ExecParams(ctx, "SELECT $1::text::jsonb, $1::text::jsonb::text", [][]byte{[]byte(in)},
			nil, nil, []int16{pgtype.BinaryFormatCode, pgtype.TextFormatCode}).Read()
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		got, err := DecodeJSONB(res.Rows[0][0], pgtype.BinaryFormatCode)
		if err != nil {
			t.Fatal(err)
		}
		if want := res.Rows[0][1]; string(got) != string(want) {
			t.Errorf("%s: decoded %q, want %q", in, got, want)
		}
	}
	if _, err := DecodeJSONB([]byte{2, '{', '}'}, pgtype.BinaryFormatCode); err == nil {
		t.Error("decoded jsonb of an unknown version")
	}
}

// TestArenaCopies: copies are independent of the source and of each other
// (an append to one never writes into the next), nil stays nil, and values
// larger than an eighth of a block get their own allocation.
func TestArenaCopies(t *testing.T) {
	var a Arena
	src := []byte("abc")
	x := a.Copy(src)
	y := a.Copy([]byte("def"))
	src[0] = 'z'
	x = append(x, '!')
	if string(x) != "abc!" || string(y) != "def" {
		t.Errorf("copies %q %q", x, y)
	}
	if a.Copy(nil) != nil {
		t.Error("nil copied to non-nil")
	}
	if e := a.Copy([]byte{}); e == nil || len(e) != 0 {
		t.Errorf("empty copied to %#v", e)
	}
	big := make([]byte, arenaBlock/8+1)
	before := len(a.buf)
	if c := a.Copy(big); len(c) != len(big) || len(a.buf) != before {
		t.Error("a large value was carved from the block")
	}
	// Many small values: every one intact.
	var all [][]byte
	for i := range 10_000 {
		all = append(all, a.Copy([]byte(strings.Repeat(string(rune('a'+i%26)), i%100))))
	}
	for i, c := range all {
		if string(c) != strings.Repeat(string(rune('a'+i%26)), i%100) {
			t.Fatalf("copy %d is %q", i, c)
		}
	}
}
