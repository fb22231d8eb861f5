package dbgen

// This file is not generated (see stream.go): a twin of OutboxListForRelay
// for the relay's hot path.

import (
	"context"

	"github.com/jackc/pgx/v5/pgtype"
)

// OutboxListForRelayLean is OutboxListForRelay, with the same query text and
// results, allocating per page rather than per row: the rows come back in a
// slice sized for MaxCount, their texts (topic, key, headers) are substrings
// of one string and their payloads sub-slices (capacity capped) of one
// buffer. A relay reading thousands of messages a second otherwise spends a
// good share of its time collecting the garbage of four allocations a row.
//
// It decodes the wire format with the column decoders of decode.go where
// the result's columns are as it expects (see fastColumns), and scans rows
// as the generated method does where they are not (the text format of
// QueryExecModeExec or the simple protocol, used behind PgBouncer) or where
// a value is one it does not take (a NULL, an infinite timestamp).
func (q *Queries) OutboxListForRelayLean(ctx context.Context, arg OutboxListForRelayParams) ([]OutboxListForRelayRow, error) {
	return q.OutboxListForRelayInto(ctx, arg, nil)
}

// OutboxPage holds the buffers of OutboxListForRelayInto that outlive a
// page: the rows' slice, the offsets of their values, the buffer their texts
// are gathered in before they become one string, and the size of the last
// full page's payloads. A page's rows are valid until the next read into the
// same OutboxPage, or its Release; their texts and payloads are never reused
// (they live in memory of their own, handed on with the messages). The zero
// value is ready; an OutboxPage is used by one read at a time.
type OutboxPage struct {
	rows         []OutboxListForRelayRow
	spans        []outboxSpans
	texts        []byte
	payloadBytes int
}

// Release clears the page's rows, keeping their slice: a page waiting for
// its next read holds none of its last rows' texts and payloads.
func (p *OutboxPage) Release() {
	clear(p.rows)
	p.rows = p.rows[:0]
}

// outboxPageKeepBytes bounds the text buffer an OutboxPage keeps, and the
// payload buffer a page starts with, for the next page: a page of large
// values leaves no large buffer behind, and grows its own as it reads.
const outboxPageKeepBytes = 4 << 20

// OutboxListForRelayInto is OutboxListForRelayLean reading into page (nil:
// buffers of its own), whose rows' slice and text buffer it reuses. After a
// full page (MaxCount rows: a relay catching up), the next page's payload
// buffer is made at once for as many bytes as that page's payloads (at most
// outboxPageKeepBytes); after a short one it grows as it reads. The rows it
// returns are page's: a second read into page, or Release, overwrites them.
func (q *Queries) OutboxListForRelayInto(ctx context.Context, arg OutboxListForRelayParams, page *OutboxPage) ([]OutboxListForRelayRow, error) {
	if page == nil {
		page = &OutboxPage{}
	}
	rows, err := q.db.Query(ctx, outboxListForRelay, arg.AfterTx, arg.AfterPosition, arg.MaxCount)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	want := max(min(int(arg.MaxCount), 10_000), 0)
	items, spans := page.rows[:0], page.spans[:0] // spans[i] locates items[i]'s texts and payload
	if cap(items) < want {
		items, spans = make([]OutboxListForRelayRow, 0, want), make([]outboxSpans, 0, want)
	}
	previous := len(page.rows)
	page.rows, page.spans = nil, nil // until this read succeeds
	var (
		texts         = page.texts[:0]
		payloads      = make([]byte, 0, min(page.payloadBytes, outboxPageKeepBytes))
		fast, started bool
	)
	for rows.Next() {
		if !started {
			var m *pgtype.Map
			if c := rows.Conn(); c != nil {
				m = c.TypeMap()
			}
			fast, started = fastColumns(rows.FieldDescriptions(), m, outboxColumns), true
		}
		// Decoded in place: a local row would escape to the heap (Scan
		// takes pointers to its fields), an allocation a row.
		items = append(items, OutboxListForRelayRow{})
		spans = append(spans, outboxSpans{})
		i, sp := &items[len(items)-1], &spans[len(spans)-1]
		if !fast || !decodeOutboxRow(rows.RawValues(), i, sp, &texts, &payloads) {
			if err := rows.Scan(&i.TransactionID, &i.Position, &i.MessageID, &i.Topic, &i.Key,
				&i.Payload, &i.Headers, &i.CreatedAt, &i.Blocked); err != nil {
				return nil, err
			}
			*sp = outboxSpans{scanned: true}
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	all := string(texts)
	for n := range items {
		sp := &spans[n]
		if sp.scanned {
			continue
		}
		it := &items[n]
		it.Topic = all[sp.topic[0]:sp.topic[1]]
		it.Key = all[sp.key[0]:sp.key[1]]
		it.Headers = all[sp.headers[0]:sp.headers[1]]
		if sp.payload[1] > sp.payload[0] {
			it.Payload = payloads[sp.payload[0]:sp.payload[1]:sp.payload[1]]
		} else {
			it.Payload = []byte{}
		}
	}
	// The rows of a longer previous page beyond this one's would keep its
	// texts and payloads alive.
	if previous > len(items) {
		clear(items[len(items):previous])
	}
	page.rows, page.spans, page.payloadBytes = items, spans, 0
	if len(items) == int(arg.MaxCount) {
		page.payloadBytes = len(payloads)
	}
	if cap(texts) <= outboxPageKeepBytes {
		page.texts = texts
	} else {
		page.texts = nil
	}
	return items, nil
}

// outboxColumns are the columns of outboxListForRelay: transaction_id,
// position, message_id, topic, key, payload, headers (text), created_at,
// blocked.
var outboxColumns = []wireColumn{
	{pgtype.XID8OID, pgtype.BinaryFormatCode},
	{pgtype.Int8OID, pgtype.BinaryFormatCode},
	{pgtype.UUIDOID, pgtype.BinaryFormatCode},
	{pgtype.TextOID, -1},
	{pgtype.TextOID, -1},
	{pgtype.ByteaOID, pgtype.BinaryFormatCode},
	{pgtype.TextOID, -1},
	{pgtype.TimestamptzOID, pgtype.BinaryFormatCode},
	{pgtype.BoolOID, pgtype.BinaryFormatCode},
}

// outboxSpans are the [start, end) offsets of a row's texts in the page's
// text buffer and of its payload in the page's payload buffer.
type outboxSpans struct {
	topic, key, headers, payload [2]int
	scanned                      bool // the row was scanned instead: no offsets
}

// decodeOutboxRow decodes one row of outboxListForRelay from the wire into
// i, appending its texts and payload to the page's buffers. It returns
// false, having appended nothing, on a value it does not take (a NULL, a
// wrong length, an infinite timestamp): the row is then scanned.
func decodeOutboxRow(v [][]byte, i *OutboxListForRelayRow, sp *outboxSpans, texts, payloads *[]byte) bool {
	if len(v) != len(outboxColumns) || v[3] == nil || v[4] == nil || v[5] == nil || v[6] == nil || len(v[8]) != 1 {
		return false
	}
	var err [4]error
	i.TransactionID, err[0] = DecodeXID8(v[0])
	i.Position, err[1] = DecodeInt8(v[1])
	i.MessageID, err[2] = DecodeUUID(v[2])
	i.CreatedAt, err[3] = DecodeTimestamptz(v[7])
	if err != [4]error{} {
		return false
	}
	i.Blocked = v[8][0] != 0
	t := *texts
	sp.topic[0] = len(t)
	t = append(t, v[3]...)
	sp.topic[1], sp.key[0] = len(t), len(t)
	t = append(t, v[4]...)
	sp.key[1], sp.headers[0] = len(t), len(t)
	t = append(t, v[6]...)
	sp.headers[1] = len(t)
	*texts = t
	sp.payload[0] = len(*payloads)
	*payloads = append(*payloads, v[5]...)
	sp.payload[1] = len(*payloads)
	return true
}
