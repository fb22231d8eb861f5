package conduit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
)

// Limits on input, checked before anything is written.
const (
	// MaxStreamIDLength is the longest stream id, in bytes.
	MaxStreamIDLength = 2048
	// MaxEventTypeLength is the longest event type name, in bytes.
	MaxEventTypeLength = 255
	// MaxEventsPerAppend is the most events one Append call takes.
	MaxEventsPerAppend = 10_000
)

// EventData is an event to append. Make it with NewEvent, which fixes its
// identity.
type EventData struct {
	// ID identifies the event, and makes appends safe to retry: appending
	// events whose ids are stored already, at the same place, writes nothing
	// and reports a duplicate. NewEvent sets a fresh UUIDv7.
	//
	// An EventData built by hand with a zero ID gets a fresh id each time it
	// is appended (Append never writes into its arguments), so resending it
	// after a lost acknowledgement stores it twice. Set the ID (uuid.NewV7,
	// or an id derived from your own request id) before the first attempt
	// when you may retry.
	ID uuid.UUID
	// Type names the event, such as "person_registered". 1 to 255 bytes.
	Type string
	// Data is the event's JSON body. Required.
	Data json.RawMessage
	// Metadata is optional JSON (correlation ids, actor, ...).
	Metadata json.RawMessage
}

// NewEvent makes an EventData of the given type, with v marshalled as JSON
// and a fresh UUIDv7 as its ID: the event's identity, fixed before the first
// append, so resending the same EventData is an idempotent retry.
func NewEvent(eventType string, v any) (EventData, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return EventData{}, &ValidationError{Field: "data", Index: -1, Reason: err.Error()}
	}
	id, err := uuid.NewV7()
	if err != nil {
		return EventData{}, fmt.Errorf("conduit: make event id: %w", err)
	}
	return EventData{ID: id, Type: eventType, Data: data}, nil
}

// Event is an event as stored.
type Event struct {
	StreamID string
	// StreamVersion is the event's place in its stream; the first is 1.
	StreamVersion int64
	// Position is the event's place in the global log.
	Position   Position
	ID         uuid.UUID
	Type       string
	Data       json.RawMessage
	Metadata   json.RawMessage // nil when none was given
	RecordedAt time.Time
}

// Position is a place in the global log: the writing transaction's id and
// the event's global position. The global log is ordered by the pair; the
// zero Position is before every event.
type Position struct {
	TransactionID  uint64
	GlobalPosition int64
}

// Compare returns -1, 0 or +1 as p is before, equal to or after q.
func (p Position) Compare(q Position) int {
	switch {
	case p.TransactionID < q.TransactionID:
		return -1
	case p.TransactionID > q.TransactionID:
		return 1
	case p.GlobalPosition < q.GlobalPosition:
		return -1
	case p.GlobalPosition > q.GlobalPosition:
		return 1
	}
	return 0
}

// Before reports whether p comes before q in the global log.
func (p Position) Before(q Position) bool { return p.Compare(q) < 0 }

// IsZero reports whether p is the start of the log.
func (p Position) IsZero() bool { return p == Position{} }

// String returns "transaction id/global position", the form ParsePosition
// reads: "0/0" for the start of the log.
func (p Position) String() string {
	return strconv.FormatUint(p.TransactionID, 10) + "/" + strconv.FormatInt(p.GlobalPosition, 10)
}

// ParsePosition reads a Position in the form String returns,
// "transaction id/global position" (as the conduit command prints it, and
// as a checkpoint is stored: conduit.projections.checkpoint_tx and
// checkpoint_position). Both numbers are decimal and not negative.
func ParsePosition(s string) (Position, error) {
	tx, pos, ok := strings.Cut(s, "/")
	if !ok {
		return Position{}, fmt.Errorf("conduit: position %q: want transaction id/global position, such as 0/0", s)
	}
	t, err := strconv.ParseUint(tx, 10, 64)
	if err != nil {
		return Position{}, fmt.Errorf("conduit: position %q: transaction id: %w", s, err)
	}
	g, err := strconv.ParseInt(pos, 10, 64)
	if err != nil || g < 0 {
		if err == nil {
			err = errors.New("negative")
		}
		return Position{}, fmt.Errorf("conduit: position %q: global position: %w", s, err)
	}
	return Position{TransactionID: t, GlobalPosition: g}, nil
}

// ExpectedVersion is what an append expects of its stream. Use Any,
// NoStream, StreamExists or Exactly(n).
type ExpectedVersion int64

const (
	// Any appends whatever the stream's version.
	Any ExpectedVersion = -1
	// NoStream appends only if the stream has no events.
	NoStream ExpectedVersion = -2
	// StreamExists appends only if the stream has at least one event.
	StreamExists ExpectedVersion = -3
)

// Exactly appends only if the stream's version is n (0: no events yet).
// A negative n is refused by Append with a *ValidationError.
func Exactly(n int64) ExpectedVersion {
	if n < 0 {
		return invalidExactly
	}
	return ExpectedVersion(n)
}

// invalidExactly is Exactly(n) for a negative n, which must not turn into
// Any, NoStream or StreamExists.
const invalidExactly ExpectedVersion = math.MinInt64

func (v ExpectedVersion) String() string {
	switch v {
	case Any:
		return "any"
	case NoStream:
		return "no stream"
	case StreamExists:
		return "stream exists"
	}
	if v == invalidExactly {
		return "Exactly(negative)"
	}
	if v < 0 {
		return fmt.Sprintf("invalid(%d)", int64(v))
	}
	return strconv.FormatInt(int64(v), 10)
}

func (v ExpectedVersion) valid() bool { return v >= StreamExists }

// invalidReason says why an invalid v is refused.
func (v ExpectedVersion) invalidReason() string {
	if v == invalidExactly {
		return "Exactly(n) needs n >= 0"
	}
	return fmt.Sprintf("%d is not a version; use Any, NoStream, StreamExists or Exactly(n)", int64(v))
}

// validateStreamID checks a stream id against the documented limits.
func validateStreamID(streamID string) error {
	switch {
	case streamID == "":
		return &ValidationError{Field: "stream id", Index: -1, Reason: "empty"}
	case len(streamID) > MaxStreamIDLength:
		return &ValidationError{Field: "stream id", Index: -1,
			Reason: fmt.Sprintf("%d bytes, limit %d", len(streamID), MaxStreamIDLength)}
	case !utf8.ValidString(streamID):
		return &ValidationError{Field: "stream id", Index: -1, Reason: "not valid UTF-8"}
	case containsNUL(streamID):
		return &ValidationError{Field: "stream id", Index: -1, Reason: "contains a NUL byte"}
	}
	return nil
}

// validateEvent checks one event; i is its index in the call.
func validateEvent(i int, e *EventData, maxSize int) error {
	switch {
	case e.Type == "":
		return &ValidationError{Field: "type", Index: i, Reason: "empty"}
	case len(e.Type) > MaxEventTypeLength:
		return &ValidationError{Field: "type", Index: i,
			Reason: fmt.Sprintf("%d bytes, limit %d", len(e.Type), MaxEventTypeLength)}
	case !utf8.ValidString(e.Type) || containsNUL(e.Type):
		return &ValidationError{Field: "type", Index: i, Reason: "not valid UTF-8 text"}
	case len(e.Data) == 0:
		return &ValidationError{Field: "data", Index: i, Reason: "empty; use {} or null for no data"}
	case len(e.Data)+len(e.Metadata) > maxSize:
		return &ValidationError{Field: "data", Index: i, Err: ErrEventTooLarge,
			Reason: fmt.Sprintf("data and metadata are %d bytes, limit %d", len(e.Data)+len(e.Metadata), maxSize)}
	}
	if reason := checkJSON(e.Data); reason != "" {
		return &ValidationError{Field: "data", Index: i, Reason: reason}
	}
	if len(e.Metadata) > 0 {
		if reason := checkJSON(e.Metadata); reason != "" {
			return &ValidationError{Field: "metadata", Index: i, Reason: reason}
		}
	}
	return nil
}

func containsNUL(s string) bool {
	for i := range len(s) {
		if s[i] == 0 {
			return true
		}
	}
	return false
}

// checkJSON returns why b cannot be stored as jsonb, or "".
// Beyond JSON's grammar (what json.Valid accepts, nesting depth included),
// jsonb refuses invalid UTF-8, the escape \u0000, unpaired UTF-16
// surrogate escapes in strings and numbers beyond PostgreSQL's numeric;
// each would fail inside the database and abort the caller's transaction,
// so look for them here. One pass over b, allocating nothing below 64
// levels of nesting: it runs on every event of every append. When b has
// several faults the reason is the first of: not valid JSON, not valid
// UTF-8, then the first other fault in b.
func checkJSON(b []byte) string {
	const notJSON = "not valid JSON"
	var (
		stackBuf [64]byte // '{' or '[' per open container
		stack    = stackBuf[:0]
		badUTF8  bool
		reason   string // the first fault of the other kinds
		i        = skipJSONSpace(b, 0)
	)
	for {
		// A value starts at i.
		if i >= len(b) {
			return notJSON
		}
		switch c := b[i]; {
		case c == '{' || c == '[':
			if len(stack) == jsonMaxDepth {
				return notJSON
			}
			i = skipJSONSpace(b, i+1)
			if i < len(b) && b[i] == c+2 { // '}' or ']': empty
				i++
				break
			}
			stack = append(stack, c)
			if c == '{' {
				var ok bool
				if i, ok = checkJSONKey(b, i, &badUTF8, &reason); !ok {
					return notJSON
				}
			}
			continue
		case c == '"':
			var ok bool
			if i, ok = checkJSONString(b, i, &badUTF8, &reason); !ok {
				return notJSON
			}
		case c == '-' || (c >= '0' && c <= '9'):
			n := jsonNumberLength(b[i:])
			if n == 0 {
				return notJSON
			}
			if reason == "" {
				reason = checkNumeric(b[i : i+n])
			}
			i += n
		case c == 't' && hasJSONLiteral(b[i:], "true"):
			i += 4
		case c == 'f' && hasJSONLiteral(b[i:], "false"):
			i += 5
		case c == 'n' && hasJSONLiteral(b[i:], "null"):
			i += 4
		default:
			return notJSON
		}
		// A value ended before i: close containers, or go to the next value.
		for {
			i = skipJSONSpace(b, i)
			if len(stack) == 0 {
				switch {
				case i != len(b):
					return notJSON
				case badUTF8:
					return "not valid UTF-8"
				}
				return reason
			}
			if i >= len(b) {
				return notJSON
			}
			top := stack[len(stack)-1]
			if b[i] == top+2 {
				stack = stack[:len(stack)-1]
				i++
				continue
			}
			if b[i] != ',' {
				return notJSON
			}
			i = skipJSONSpace(b, i+1)
			if top == '{' {
				var ok bool
				if i, ok = checkJSONKey(b, i, &badUTF8, &reason); !ok {
					return notJSON
				}
			}
			break
		}
	}
}

// jsonMaxDepth is encoding/json's nesting limit (json.Valid refuses more).
const jsonMaxDepth = 10000

func skipJSONSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\t' || b[i] == '\r') {
		i++
	}
	return i
}

func hasJSONLiteral(b []byte, lit string) bool {
	return len(b) >= len(lit) && string(b[:len(lit)]) == lit
}

// checkJSONKey checks an object's key and its colon at i, and returns where
// the value starts.
func checkJSONKey(b []byte, i int, badUTF8 *bool, reason *string) (int, bool) {
	if i >= len(b) || b[i] != '"' {
		return i, false
	}
	i, ok := checkJSONString(b, i, badUTF8, reason)
	if !ok {
		return i, false
	}
	i = skipJSONSpace(b, i)
	if i >= len(b) || b[i] != ':' {
		return i, false
	}
	return skipJSONSpace(b, i+1), true
}

// checkJSONString checks the string whose opening quote is at i and
// returns the index after its closing quote; false if it is not valid
// JSON. It records invalid UTF-8, and the first \u0000 or unpaired
// surrogate escape in *reason.
func checkJSONString(b []byte, i int, badUTF8 *bool, reason *string) (int, bool) {
	for i++; i < len(b); {
		c := b[i]
		switch {
		case c == '"':
			return i + 1, true
		case c < 0x20:
			return i, false
		case c == '\\':
			if i+1 >= len(b) {
				return i, false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
				continue
			case 'u':
			default:
				return i, false
			}
			if i+6 > len(b) {
				return i, false
			}
			r := hex4(b[i+2 : i+6])
			if r < 0 {
				return i, false
			}
			i += 6
			fault := ""
			switch {
			case r == 0:
				fault = `contains \u0000, which PostgreSQL's jsonb cannot store`
			case r >= 0xD800 && r <= 0xDBFF: // high surrogate: a low one must follow
				lo := -1
				if i+6 <= len(b) && b[i] == '\\' && b[i+1] == 'u' {
					lo = hex4(b[i+2 : i+6])
				}
				if lo >= 0xDC00 && lo <= 0xDFFF {
					i += 6
				} else {
					// (Not consumed: a following escape is checked as
					// itself.)
					fault = "contains an unpaired UTF-16 surrogate escape"
				}
			case r >= 0xDC00 && r <= 0xDFFF:
				fault = "contains an unpaired UTF-16 surrogate escape"
			}
			if fault != "" && *reason == "" {
				*reason = fault
			}
		case c < utf8.RuneSelf:
			i++
		default:
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				*badUTF8 = true
			}
			i += size
		}
	}
	return i, false
}

// jsonNumberLength returns the length of the JSON number at the start of b,
// 0 if none starts there.
func jsonNumberLength(b []byte) int {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = skipDigits(b, i+1)
	default:
		return 0
	}
	if i < len(b) && b[i] == '.' {
		j := skipDigits(b, i+1)
		if j == i+1 {
			return 0
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := skipDigits(b, i)
		if j == i {
			return 0
		}
		i = j
	}
	return i
}

func skipDigits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

// Limits of PostgreSQL's numeric, in which jsonb stores numbers.
const (
	numericExponentLimit = 1<<31/2 - 1 // |exponent| must stay below INT_MAX/2
	numericScaleLimit    = 0x3FFF      // digits after the point: NUMERIC_DSCALE_MAX
	numericWeightLimit   = 1<<15 - 1   // NUMERIC_WEIGHT_MAX, in base-10000 digits
)

// checkNumeric returns why PostgreSQL's numeric cannot hold the valid JSON
// number lit, or "". jsonb refuses such a number inside the database
// (22003), which would abort the caller's transaction.
func checkNumeric(lit []byte) string {
	mant, exp := lit, int64(0)
	if i := bytes.IndexAny(lit, "eE"); i >= 0 {
		mant = lit[:i]
		e := lit[i+1:]
		neg := len(e) > 0 && e[0] == '-'
		if len(e) > 0 && (e[0] == '-' || e[0] == '+') {
			e = e[1:]
		}
		for _, d := range e {
			exp = min(exp*10+int64(d-'0'), numericExponentLimit) // saturates, as strtol does
		}
		if neg {
			exp = -exp
		}
	}
	if exp >= numericExponentLimit || exp <= -numericExponentLimit {
		return "contains a number whose exponent is out of PostgreSQL's numeric range"
	}
	mant = bytes.TrimPrefix(mant, []byte("-"))
	intDigits, fracDigits := mant, []byte(nil)
	if i := bytes.IndexByte(mant, '.'); i >= 0 {
		intDigits, fracDigits = mant[:i], mant[i+1:]
	}
	if int64(len(fracDigits))-exp > numericScaleLimit {
		return "contains a number with more than 16,383 digits after the point (PostgreSQL's numeric limit)"
	}
	first := -1 // the first significant digit, in intDigits then fracDigits
	for i, d := range intDigits {
		if d != '0' {
			first = i
			break
		}
	}
	if first < 0 {
		for i, d := range fracDigits {
			if d != '0' {
				first = len(intDigits) + i
				break
			}
		}
	}
	if first < 0 {
		return "" // zero
	}
	lead := int64(len(intDigits)-1-first) + exp // the decimal exponent of the first significant digit
	if lead >= 0 && lead/4 > numericWeightLimit {
		return "contains a number of 10^131072 or more (PostgreSQL's numeric limit)"
	}
	return ""
}

// hex4 decodes four hex digits; -1 if not hex.
func hex4(h []byte) int {
	n := 0
	for _, c := range h {
		n <<= 4
		switch {
		case c >= '0' && c <= '9':
			n |= int(c - '0')
		case c >= 'a' && c <= 'f':
			n |= int(c-'a') + 10
		case c >= 'A' && c <= 'F':
			n |= int(c-'A') + 10
		default:
			return -1
		}
	}
	return n
}
