package conduit

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// checkJSONReference is checkJSON as it was before its single pass:
// json.Valid, utf8.Valid, then a scan for what jsonb refuses beyond them.
// The single pass must give the same answer for every input.
func checkJSONReference(b []byte) string {
	if !json.Valid(b) {
		return "not valid JSON"
	}
	if !utf8.Valid(b) {
		return "not valid UTF-8"
	}
	inString := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !inString {
			switch {
			case c == '"':
				inString = true
			case c == '-' || (c >= '0' && c <= '9'):
				n := referenceNumberLength(b[i:])
				if reason := checkNumeric(b[i : i+n]); reason != "" {
					return reason
				}
				i += n - 1
			}
			continue
		}
		switch c {
		case '"':
			inString = false
		case '\\':
			if b[i+1] != 'u' {
				i++
				continue
			}
			r := hex4(b[i+2 : i+6])
			switch {
			case r == 0:
				return `contains \u0000, which PostgreSQL's jsonb cannot store`
			case r >= 0xD800 && r <= 0xDBFF:
				if i+12 > len(b) || b[i+6] != '\\' || b[i+7] != 'u' {
					return "contains an unpaired UTF-16 surrogate escape"
				}
				if lo := hex4(b[i+8 : i+12]); lo < 0xDC00 || lo > 0xDFFF {
					return "contains an unpaired UTF-16 surrogate escape"
				}
				i += 11
			case r >= 0xDC00 && r <= 0xDFFF:
				return "contains an unpaired UTF-16 surrogate escape"
			default:
				i += 5
			}
		}
	}
	return ""
}

func referenceNumberLength(b []byte) int {
	n := 0
	for n < len(b) && strings.IndexByte("0123456789-+.eE", b[n]) >= 0 {
		n++
	}
	return n
}

var checkJSONCases = []string{
	``, ` `, `{}`, `[]`, `""`, `0`, `-0`, `-`, `01`, `1.`, `.5`, `1e`, `1e+`, `1E-7`, `-12.5e+3`, `1.5E10`,
	`true`, `false`, `null`, `tru`, `nul`, `truex`, `True`, ` {} `, "\t[\r\n]\n", `{} {}`, `[1,]`, `[,1]`, `[1 2]`,
	`{"a":1,}`, `{"a" 1}`, `{"a":}`, `{1:2}`, `{"a":1,"b":[true,false,null,{"c":"d"}]}`, `[[[[[]]]]]`, `[[[[[]]]]`,
	`[}`, `{]`, `"abc`, `"a\"b"`, `"\/\b\f\n\r\t\\"`, `"\x"`, `"\u00e9"`, `"\u00g9"`, `"\u12"`, "\"a\tb\"",
	`"\u0000"`, `{"k\u0000":1}`, `"\ud83d\ude00"`, `"\ud83d"`, `"\ud83dx"`, `"\ude00"`, `"\ud83d\u0041"`,
	`"\ud83d\ud83d\ude00"`, `"é"`, "\"\xff\"", "\"\xed\xa0\x80\"", "[\"\xc3\"]", "\xef\xbb\xbf{}", "{\"a\":\"\xff\",\"b\":\"\\u0000\"}",
	`["\u0000", "\xff"]`, `[1e999999999999]`, `[1e2147483647]`, `[1e-2147483647]`, `[0e9999999999]`,
	`[1` + strings.Repeat("0", 20) + `]`, `0.` + strings.Repeat("0", 16383) + `1`, `[1e131072, "\u0000"]`,
	`{"a":"\u0000"} x`, `"\u0000" [`, strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
	strings.Repeat("[", 10001) + strings.Repeat("]", 10001), strings.Repeat(`{"a":`, 10000) + `1` + strings.Repeat("}", 10000),
	strings.Repeat("[", 10001), strings.Repeat("[", 70) + `"\u0000"` + strings.Repeat("]", 70),
}

func TestCheckJSONSinglePass(t *testing.T) {
	t.Parallel()
	for _, c := range checkJSONCases {
		if got, want := checkJSON([]byte(c)), checkJSONReference([]byte(c)); got != want {
			t.Errorf("checkJSON(%.60q) = %q; want %q", c, got, want)
		}
	}
}

// Every input: the same answer as json.Valid, utf8.Valid and the scan.
func FuzzCheckJSON(f *testing.F) {
	for _, c := range checkJSONCases {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := checkJSON(b), checkJSONReference(b); got != want {
			t.Fatalf("checkJSON(%q) = %q; want %q", b, got, want)
		}
	})
}

// checkJSONDocs are an event's data as services write them: a small
// event, and a document of about 1.5 kB with nesting, numbers, escapes and
// non-ASCII text.
func checkJSONDocs() map[string][]byte {
	small := []byte(`{"account":"acc-1","amount":100,"currency":"EUR"}`)
	var doc bytes.Buffer
	doc.WriteString(`{"order":"ord-01923","customer":{"id":"c-77","name":"Zoë Ångström","tags":["vip","eu"]},"lines":[`)
	for i := range 12 {
		if i > 0 {
			doc.WriteByte(',')
		}
		doc.WriteString(`{"sku":"SKU-12345","qty":3,"price":19.95,"note":"gift wrap \"blue\"\nthanks","discount":-0.5e-1}`)
	}
	doc.WriteString(`],"paid":true,"refund":null}`)
	return map[string][]byte{"small": small, "document": doc.Bytes()}
}

func BenchmarkCheckJSON(b *testing.B) {
	for name, doc := range checkJSONDocs() {
		if checkJSON(doc) != "" || checkJSONReference(doc) != "" {
			b.Fatalf("%s: refused", name)
		}
		for _, impl := range []struct {
			name string
			fn   func([]byte) string
		}{{"single-pass", checkJSON}, {"reference", checkJSONReference}} {
			b.Run(name+"/"+impl.name, func(b *testing.B) {
				b.SetBytes(int64(len(doc)))
				b.ReportAllocs()
				for b.Loop() {
					impl.fn(doc)
				}
			})
		}
	}
}
