package conduit

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// fieldRange is a numeric configuration field and its documented range.
type fieldRange struct {
	field     string // "ProjectorConfig.BatchSize"
	v, lo, hi int64
	text      func(int64) string // how to print a value of the field
}

func countRange(field string, v, lo, hi int) fieldRange {
	return fieldRange{field, int64(v), int64(lo), int64(hi), func(n int64) string { return strconv.FormatInt(n, 10) }}
}

func bytesRange(field string, v, lo, hi int) fieldRange {
	return fieldRange{field, int64(v), int64(lo), int64(hi), func(n int64) string { return strconv.FormatInt(n, 10) + " bytes" }}
}

func durationRange(field string, v, lo, hi time.Duration) fieldRange {
	return fieldRange{field, int64(v), int64(lo), int64(hi), func(n int64) string { return time.Duration(n).String() }}
}

// checkRanges returns a *ConfigError for the first field out of its range.
func checkRanges(fields ...fieldRange) error {
	for _, f := range fields {
		if f.v < f.lo || f.v > f.hi {
			return &ConfigError{Field: f.field,
				Reason: fmt.Sprintf("%s is out of range %s to %s", f.text(f.v), f.text(f.lo), f.text(f.hi))}
		}
	}
	return nil
}

// setDefault sets *v to def if it is the zero value.
func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// checkName returns a *ConfigError unless name, the value of field, is
// text PostgreSQL can store: non-empty, valid UTF-8, no NUL.
func checkName(field, name string) error {
	switch {
	case name == "":
		return &ConfigError{Field: field, Reason: "empty"}
	case !utf8.ValidString(name):
		return &ConfigError{Field: field, Reason: fmt.Sprintf("%q is not valid UTF-8", name)}
	case strings.IndexByte(name, 0) >= 0:
		return &ConfigError{Field: field, Reason: fmt.Sprintf("%q contains a NUL byte", name)}
	}
	return nil
}
