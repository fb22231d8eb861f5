package dbgen

// This file is not generated (see stream.go): a twin of OutboxListForRelay
// for the relay's hot path.

import (
	"context"
	"encoding/binary"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// OutboxListForRelayLean is OutboxListForRelay, with the same query text and
// results, allocating per page rather than per row: the rows come back in a
// slice sized for MaxCount, their texts (topic, key, headers) are substrings
// of one string and their payloads sub-slices (capacity capped) of one
// buffer. A relay reading thousands of messages a second otherwise spends a
// good share of its time collecting the garbage of four allocations a row.
//
// It decodes the binary wire format pgx asks for when it prepares the query,
// and scans rows as the generated method does where it gets anything else
// (the text format of QueryExecModeExec or the simple protocol, used behind
// PgBouncer) or a value it does not expect.
func (q *Queries) OutboxListForRelayLean(ctx context.Context, arg OutboxListForRelayParams) ([]OutboxListForRelayRow, error) {
	rows, err := q.db.Query(ctx, outboxListForRelay, arg.AfterTx, arg.AfterPosition, arg.MaxCount)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	items := make([]OutboxListForRelayRow, 0, max(min(int(arg.MaxCount), 10_000), 0))
	binaryRows := binaryFormats(rows, 9, 3, 4, 6)
	var texts, payloads []byte
	spans := make([]outboxSpans, 0, cap(items)) // spans[i] locates items[i]'s texts and payload
	for rows.Next() {
		// Decoded in place: a local row would escape to the heap (Scan
		// takes pointers to its fields), an allocation a row.
		items = append(items, OutboxListForRelayRow{})
		spans = append(spans, outboxSpans{})
		i, sp := &items[len(items)-1], &spans[len(spans)-1]
		if !binaryRows || !decodeOutboxRow(rows.RawValues(), i, sp, &texts, &payloads) {
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
	return items, nil
}

// outboxSpans are the [start, end) offsets of a row's texts in the page's
// text buffer and of its payload in the page's payload buffer.
type outboxSpans struct {
	topic, key, headers, payload [2]int
	scanned                      bool // the row was scanned instead: no offsets
}

// binaryFormats reports whether rows has n columns, all in the binary
// format but the text columns listed, whose two formats are the same bytes
// (pgx asks for text values in the text format).
func binaryFormats(rows pgx.Rows, n int, text ...int) bool {
	fds := rows.FieldDescriptions()
	if len(fds) != n {
		return false
	}
	for c, fd := range fds {
		if fd.Format != pgtype.BinaryFormatCode && !(slices.Contains(text, c) && fd.DataTypeOID == pgtype.TextOID) {
			return false
		}
	}
	return true
}

// decodeOutboxRow decodes one row of outboxListForRelay from the binary
// format into i, appending its texts and payload to the page's buffers. It
// returns false, having appended nothing, on a value it does not expect (a
// NULL, a length that is wrong for the type, an infinite timestamp).
func decodeOutboxRow(v [][]byte, i *OutboxListForRelayRow, sp *outboxSpans, texts, payloads *[]byte) bool {
	if len(v) != 9 || len(v[0]) != 8 || len(v[1]) != 8 || len(v[2]) != 16 || len(v[7]) != 8 || len(v[8]) != 1 ||
		v[3] == nil || v[4] == nil || v[5] == nil || v[6] == nil {
		return false
	}
	created, ok := timestamptz(v[7])
	if !ok {
		return false
	}
	i.TransactionID = binary.BigEndian.Uint64(v[0])
	i.Position = int64(binary.BigEndian.Uint64(v[1]))
	copy(i.MessageID[:], v[2])
	i.CreatedAt = created
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

// pgEpoch is the origin of PostgreSQL's binary timestamps.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// timestamptz decodes a binary timestamptz (microseconds since pgEpoch) as
// pgx scans it into a time.Time (in the local zone); false for infinity.
func timestamptz(b []byte) (time.Time, bool) {
	us := int64(binary.BigEndian.Uint64(b))
	if us == 1<<63-1 || us == -1<<63 {
		return time.Time{}, false
	}
	return time.Unix(pgEpoch.Unix()+us/1_000_000, (us%1_000_000)*1000).Local(), true
}
