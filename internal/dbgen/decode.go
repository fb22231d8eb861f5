package dbgen

// This file is not generated. It decodes rows of the events table's columns
// straight from the wire (pgx's RawValues), which costs less per row than
// rows.Scan: no per-value plan dispatch, and the byte fields of a page's
// rows are carved from shared blocks (an arena) instead of one allocation
// each. It decodes only the formats it knows (checked per result, from the
// field descriptions and the connection's type map); anything else is
// scanned with rows.Scan, as before.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// arenaBlock is the size of an Arena's blocks; a value larger than an
// eighth of it gets an allocation of its own, so a block is never mostly
// wasted.
const arenaBlock = 32 << 10

// Arena hands out copies of byte values carved from shared blocks: one
// allocation per block instead of one per value. A copy keeps its block
// alive (at most arenaBlock bytes) while anything refers to it. Copies are
// capped (full slice expressions): appending to one reallocates rather than
// overwrite its neighbour. The zero Arena is ready to use.
type Arena struct{ buf []byte }

// Copy returns a copy of b: nil for nil, and a non-nil empty slice for an
// empty b.
func (a *Arena) Copy(b []byte) []byte {
	switch n := len(b); {
	case b == nil:
		return nil
	case n == 0:
		return []byte{}
	case n > arenaBlock/8:
		return bytes.Clone(b)
	case cap(a.buf)-len(a.buf) < n:
		a.buf = make([]byte, 0, arenaBlock)
	}
	start := len(a.buf)
	a.buf = append(a.buf, b...)
	return a.buf[start:len(a.buf):len(a.buf)]
}

// Column decoders of the binary format (and the text format, where the two
// are the same bytes). Each reports a value it cannot decode as an error;
// NULL is the caller's to handle.

// DecodeInt8 decodes an int8 (bigint) in binary format.
func DecodeInt8(src []byte) (int64, error) {
	if len(src) != 8 {
		return 0, fmt.Errorf("int8: %d bytes, want 8", len(src))
	}
	return int64(binary.BigEndian.Uint64(src)), nil
}

// DecodeXID8 decodes an xid8 in binary format.
func DecodeXID8(src []byte) (uint64, error) {
	if len(src) != 8 {
		return 0, fmt.Errorf("xid8: %d bytes, want 8", len(src))
	}
	return binary.BigEndian.Uint64(src), nil
}

// DecodeUUID decodes a uuid in binary format.
func DecodeUUID(src []byte) (uuid.UUID, error) {
	var u uuid.UUID
	if len(src) != len(u) {
		return u, fmt.Errorf("uuid: %d bytes, want %d", len(src), len(u))
	}
	copy(u[:], src)
	return u, nil
}

// DecodeJSONB returns the JSON text of a jsonb value, in text format, or in
// binary format (a version byte, 1, then the text). The result aliases src.
func DecodeJSONB(src []byte, format int16) ([]byte, error) {
	if format == pgtype.TextFormatCode {
		return src, nil
	}
	if len(src) == 0 || src[0] != 1 {
		return nil, errors.New("jsonb: unknown binary format version")
	}
	return src[1:], nil
}

// Microseconds from the Unix epoch to PostgreSQL's, 2000-01-01 UTC.
const microsecFromUnixEpochToY2K = 946_684_800 * 1_000_000

// The bounds of a timestamptz, as pgx checks them.
var (
	minTimestamptz = time.Date(-4713, time.November, 24, 0, 0, 0, 0, time.UTC)
	endTimestamptz = time.Date(294277, time.January, 1, 0, 0, 0, 0, time.UTC)
)

// DecodeTimestamptz decodes a timestamptz in binary format as pgx does (a
// time in the local time zone, as time.Unix returns it). Infinite values
// are errors: a time.Time cannot hold them.
func DecodeTimestamptz(src []byte) (time.Time, error) {
	if len(src) != 8 {
		return time.Time{}, fmt.Errorf("timestamptz: %d bytes, want 8", len(src))
	}
	us := int64(binary.BigEndian.Uint64(src))
	if us == math.MaxInt64 || us == math.MinInt64 {
		return time.Time{}, errors.New("timestamptz: infinity cannot be held in a time.Time")
	}
	t := time.Unix(microsecFromUnixEpochToY2K/1_000_000+us/1_000_000,
		(microsecFromUnixEpochToY2K%1_000_000*1_000)+(us%1_000_000*1_000))
	if t.Before(minTimestamptz) || !t.Before(endTimestamptz) {
		return time.Time{}, fmt.Errorf("timestamptz %d microseconds from 2000-01-01 is out of range", us)
	}
	return t, nil
}

// EventDecoder decodes rows of the events table's columns, in its order
// (global_position, transaction_id, stream_id, stream_version, event_id,
// event_type, data, metadata, recorded_at), from one result: from the wire
// when the result's columns are of the types and formats it knows, else with
// rows.Scan. Data and metadata (nil when NULL) are carved from an arena shared by the rows
// it decodes; a stream id equal to the previous row's, and an event type
// seen before, reuse the string made for it.
type EventDecoder struct {
	arena      Arena
	fast       bool
	dataFormat int16
	metaFormat int16
	lastStream string
	types      map[string]string
}

// maxInternedTypes bounds the event types an EventDecoder remembers.
const maxInternedTypes = 1024

// wireColumn is a result column as a decoder reads it from the wire: type
// OID and format (-1: either; text values read the same in both, jsonb is
// decoded in both).
type wireColumn struct {
	oid    uint32
	format int16
}

// eventColumns are the columns of the events table, as EventDecoder reads
// them.
var eventColumns = []wireColumn{
	{pgtype.Int8OID, pgtype.BinaryFormatCode},
	{pgtype.XID8OID, pgtype.BinaryFormatCode},
	{pgtype.TextOID, -1},
	{pgtype.Int8OID, pgtype.BinaryFormatCode},
	{pgtype.UUIDOID, pgtype.BinaryFormatCode},
	{pgtype.TextOID, -1},
	{pgtype.JSONBOID, -1},
	{pgtype.JSONBOID, -1},
	{pgtype.TimestamptzOID, pgtype.BinaryFormatCode},
}

// defaultCodecs are pgx's codecs of the types the decoder reads.
var defaultCodecs = [...]struct {
	oid   uint32
	codec pgtype.Codec
}{
	{pgtype.Int8OID, pgtype.Int8Codec{}}, {pgtype.XID8OID, pgtype.Uint64Codec{}},
	{pgtype.TextOID, pgtype.TextCodec{}}, {pgtype.UUIDOID, pgtype.UUIDCodec{}},
	{pgtype.ByteaOID, pgtype.ByteaCodec{}}, {pgtype.BoolOID, pgtype.BoolCodec{}},
}

// Start readies d for the rows of a new result, whose field descriptions
// are fields, on a connection with type map m (nil: the rows are scanned).
// The decoder decodes from the wire only if every column is as it expects
// and the connection decodes timestamptz in the local time zone with pgx's
// own codec.
func (d *EventDecoder) Start(fields []pgconn.FieldDescription, m *pgtype.Map) {
	d.fast = fastColumns(fields, m, eventColumns)
	if d.fast {
		d.dataFormat, d.metaFormat = fields[6].Format, fields[7].Format
	}
}

// fastColumns reports whether a result whose field descriptions are fields,
// on a connection with type map m, has the columns want, in the formats
// want says, decoded by pgx's own codecs (timestamptz in the local time
// zone): whether a decoder may read its rows from the wire.
func fastColumns(fields []pgconn.FieldDescription, m *pgtype.Map, want []wireColumn) bool {
	if m == nil || len(fields) != len(want) {
		return false
	}
	for i, w := range want {
		f := fields[i]
		if f.DataTypeOID != w.oid || (w.format >= 0 && f.Format != w.format) ||
			(w.format < 0 && f.Format != pgtype.TextFormatCode && f.Format != pgtype.BinaryFormatCode) {
			return false
		}
	}
	// A connection may register codecs of its own, or scan times in
	// another location: leave those to Scan.
	t, ok := m.TypeForOID(pgtype.TimestamptzOID)
	if !ok {
		return false
	}
	c, ok := t.Codec.(*pgtype.TimestamptzCodec)
	if !ok || c.ScanLocation != nil {
		return false
	}
	for _, c := range defaultCodecs {
		if t, ok := m.TypeForOID(c.oid); !ok || t.Codec != c.codec {
			return false
		}
	}
	if t, ok := m.TypeForOID(pgtype.JSONBOID); !ok {
		return false
	} else if _, ok := t.Codec.(*pgtype.JSONBCodec); !ok {
		return false
	}
	return true
}

// Decode decodes the current row of rows into e.
func (d *EventDecoder) Decode(rows pgx.Rows, e *ConduitEvent) error {
	if !d.fast {
		return rows.Scan(&e.GlobalPosition, &e.TransactionID, &e.StreamID, &e.StreamVersion,
			&e.EventID, &e.EventType, &e.Data, &e.Metadata, &e.RecordedAt)
	}
	v := rows.RawValues()
	if len(v) != len(eventColumns) {
		return fmt.Errorf("decode event: %d values, want %d", len(v), len(eventColumns))
	}
	for i, b := range v {
		if b == nil && i != 6 && i != 7 { // only data and metadata may be NULL
			return fmt.Errorf("decode event: column %d is NULL", i)
		}
	}
	var err error
	if e.GlobalPosition, err = DecodeInt8(v[0]); err != nil {
		return err
	}
	if e.TransactionID, err = DecodeXID8(v[1]); err != nil {
		return err
	}
	e.StreamID = d.stream(v[2])
	if e.StreamVersion, err = DecodeInt8(v[3]); err != nil {
		return err
	}
	if e.EventID, err = DecodeUUID(v[4]); err != nil {
		return err
	}
	e.EventType = d.eventType(v[5])
	if e.Data, err = d.json(v[6], d.dataFormat); err != nil {
		return err
	}
	if e.Metadata, err = d.json(v[7], d.metaFormat); err != nil {
		return err
	}
	e.RecordedAt, err = DecodeTimestamptz(v[8])
	return err
}

// json returns a copy of a jsonb value's text: nil for NULL.
func (d *EventDecoder) json(src []byte, format int16) (json.RawMessage, error) {
	if src == nil {
		return nil, nil
	}
	b, err := DecodeJSONB(src, format)
	if err != nil {
		return nil, err
	}
	return d.arena.Copy(b), nil
}

// stream returns b as a string, the previous row's if equal.
func (d *EventDecoder) stream(b []byte) string {
	if string(b) != d.lastStream {
		d.lastStream = string(b)
	}
	return d.lastStream
}

// eventType returns b as a string, interned.
func (d *EventDecoder) eventType(b []byte) string {
	if s, ok := d.types[string(b)]; ok {
		return s
	}
	s := string(b)
	if d.types == nil {
		d.types = make(map[string]string)
	}
	if len(d.types) < maxInternedTypes {
		d.types[s] = s
	}
	return s
}
