package conduit

import (
	"testing"
	"time"
)

// A read's pages double while its reader keeps up, up to 16 times
// ReadPageSize, halve after a slow page, never below ReadPageSize, and
// never above ReadPageSizeLimit.
func TestPageSizer(t *testing.T) {
	t.Parallel()
	page := func(p *pageSizer, took time.Duration) int {
		size := p.begin()
		p.start = time.Now().Add(-took)
		p.end()
		return size
	}
	p := newPageSizer(1000)
	var sizes []int
	for range 7 {
		sizes = append(sizes, page(&p, time.Millisecond))
	}
	want := []int{1000, 2000, 4000, 8000, 16000, 16000, 16000}
	for i := range want {
		if sizes[i] != want[i] {
			t.Fatalf("pages of a quick reader: %v, want %v", sizes, want)
		}
	}
	page(&p, time.Second)         // slow: the next is halved
	page(&p, 50*time.Millisecond) // neither quick nor slow: unchanged
	if got := p.begin(); got != 8000 {
		t.Fatalf("after a slow page and a middling one: %d, want 8000", got)
	}
	for range 10 {
		page(&p, time.Second)
	}
	if got := p.begin(); got != 1000 {
		t.Fatalf("after slow pages: %d, want ReadPageSize (1000)", got)
	}
	if big := newPageSizer(ReadPageSizeLimit / 4); big.max != ReadPageSizeLimit {
		t.Fatalf("largest page for ReadPageSize %d: %d, want ReadPageSizeLimit", ReadPageSizeLimit/4, big.max)
	}
	if one := newPageSizer(1); one.max != readPageGrowth {
		t.Fatalf("largest page for ReadPageSize 1: %d, want %d", one.max, readPageGrowth)
	}
}
