package dbgen

import (
	"reflect"
	"testing"
)

// A released page keeps its rows' slice for the next read, but none of the
// rows: their texts and payloads, handed on with the messages, are not kept
// alive by a page that waits for its next read.
func TestOutboxPageRelease(t *testing.T) {
	payload := []byte("payload")
	page := &OutboxPage{rows: make([]OutboxListForRelayRow, 3, 8)}
	for i := range page.rows {
		page.rows[i] = OutboxListForRelayRow{Topic: "topic", Key: "key", Payload: payload, Headers: "{}"}
	}
	page.Release()
	if len(page.rows) != 0 || cap(page.rows) != 8 {
		t.Fatalf("after Release: %d rows, capacity %d; want 0 rows, the slice kept (capacity 8)", len(page.rows), cap(page.rows))
	}
	for i, row := range page.rows[:3] {
		if !reflect.DeepEqual(row, OutboxListForRelayRow{}) {
			t.Errorf("row %d still holds %+v after Release", i, row)
		}
	}
}
