package conduit_test

import (
	"math"
	"testing"

	"github.com/conduit-es/conduit"
)

func TestParsePositionRoundTrip(t *testing.T) {
	for _, p := range []conduit.Position{
		{},
		{TransactionID: 1, GlobalPosition: 2},
		{TransactionID: 742, GlobalPosition: 10_000_001},
		{TransactionID: math.MaxUint64, GlobalPosition: math.MaxInt64},
	} {
		got, err := conduit.ParsePosition(p.String())
		if err != nil {
			t.Fatalf("ParsePosition(%q): %v", p.String(), err)
		}
		if got != p {
			t.Errorf("ParsePosition(%q) = %+v, want %+v", p.String(), got, p)
		}
	}
}

func TestParsePositionRefuses(t *testing.T) {
	for _, s := range []string{"", "12", "/", "1/", "/1", "a/1", "1/b", "-1/1", "1/-1", "1/2/3", " 1/2", "1/2 ",
		"18446744073709551616/1", "1/9223372036854775808"} {
		if p, err := conduit.ParsePosition(s); err == nil {
			t.Errorf("ParsePosition(%q) = %+v, want an error", s, p)
		}
	}
}
