package main

// The framing policy's pure functions, on cases from tests/http_corpus.py. (CI runs the Python
// suites, which are the judge; this is for working on the port:
// GO111MODULE=off GOPATH=/usr/share/gocode go test in this directory.)

import (
	"strings"
	"testing"
)

func verdict(raw string) (status int, h head) {
	from, lines := 0, 0
	end, rej := scanHead([]byte(raw), &from, &lines)
	if rej == nil && end == 0 {
		return 0, h // incomplete
	}
	if rej == nil {
		h, rej = checkHead([]byte(raw[:end]))
	}
	if rej != nil {
		return rej.status, h
	}
	return 200, h
}

func TestPolicy(t *testing.T) {
	post := func(fields string) string { return "POST /echo HTTP/1.1\r\nHost: c\r\n" + fields + "\r\n" }
	get := func(line, fields string) string { return line + "\r\n" + fields + "\r\n" }
	host := "Host: c\r\n"
	cases := []struct {
		name, raw string
		status    int
	}{
		{"cl-and-te", post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"), 400},
		{"cl-repeated-same", post("Content-Length: 5\r\nContent-Length: 5\r\n"), 400},
		{"cl-repeated-same-list", post("Content-Length: 5, 5\r\n"), 400},
		{"cl-signed", post("Content-Length: +5\r\n"), 400},
		{"cl-empty", post("Content-Length: \r\n"), 400},
		{"te-unsupported-coding", post("Transfer-Encoding: gzip, chunked\r\n"), 501},
		{"version-2-unknown-method", get("BREW /json HTTP/2.0", host), 505},
		{"method-ssdp", get("M-SEARCH * HTTP/1.1", host), 501},
		{"asterisk-not-options", get("GET * HTTP/1.1", host), 400},
		{"del-in-value", get("GET /json HTTP/1.1", host+"X-Value: a\x7fb\r\n"), 400},
		{"te-trailing-comma", post("Transfer-Encoding: chunked,\r\n"), 400},
		{"te-vertical-tab", post("Transfer-Encoding: \x0bchunked\r\n"), 400},
		{"te-in-http10", "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
		{"space-before-colon", post("Content-Length : 37\r\n"), 400},
		{"obs-fold", get("GET /json HTTP/1.1", host+"X-Folded: a\r\n b\r\n"), 400},
		{"nul-in-value", get("GET /json HTTP/1.1", host+"X-Value: a\x00b\r\n"), 400},
		{"no-host", get("GET /json HTTP/1.1", ""), 400},
		{"two-hosts", get("GET /json HTTP/1.1", host+"Host: other\r\n"), 400},
		{"obs-text-in-target", get("GET /json\xff HTTP/1.1", host), 400},
		{"bare-lf-header", get("GET /json HTTP/1.1", host+"X-Value: a\nX-Other: b\r\n"), 400},
		{"version-2", get("GET /json HTTP/2.0", host), 505},
		{"method-lowercase", get("get /json HTTP/1.1", host), 501},
		{"method-not-a-token", get("G(T /json HTTP/1.1", host), 400},
		{"request-line-20k", get("GET /"+strings.Repeat("a", 20*1024)+" HTTP/1.1", host), 414},
		{"headers-101", get("GET /json HTTP/1.1", host+strings.Repeat("X-N: v\r\n", 100)), 431},
		{"body-cl-huge", post("Content-Length: 99999999999999999999999999\r\n"), 413},
		{"te-chunked-mixed-case", post("Transfer-Encoding: ChUnKeD\r\n"), 200},
		{"http10-without-host", "GET /json HTTP/1.0\r\n\r\n", 200},
		{"absolute-form", get("GET http://c/json HTTP/1.1", host), 200},
		{"headers-100", get("GET /json HTTP/1.1", host+strings.Repeat("X-N: v\r\n", 99)), 200},
	}
	for _, c := range cases {
		if status, _ := verdict(c.raw); status != c.status {
			t.Errorf("%s: %d, want %d", c.name, status, c.status)
		}
	}
}

func TestWhatNetHTTPWouldReadOtherwise(t *testing.T) {
	_, h := verdict("GET json HTTP/1.1\r\nHost: fu zz\r\nExpect: nothing\r\nTrailer: X\r\n\r\n")
	if !h.targetReplaced || !h.hostUnusable || !h.dropExpect || !h.dropTrailer {
		t.Fatalf("%+v", h)
	}
	got := string(rewrite([]byte("GET json HTTP/1.1\r\nHost: fu zz\r\nExpect: nothing\r\nTrailer: X\r\nA: b\r\n\r\n"), &h))
	if want := "GET / HTTP/1.1\r\nHost: invalid\r\nA: b\r\n\r\n"; got != want {
		t.Fatalf("%q, want %q", got, want)
	}
	if _, h := verdict("OPTIONS * HTTP/1.1\r\nHost: c\r\n\r\n"); !h.targetReplaced {
		t.Fatalf("OPTIONS * handed to net/http, which answers it itself: %+v", h)
	}
	if _, h := verdict("GET * HTTP/1.1\r\nHost: c\r\n\r\n"); h.rewritten() {
		t.Fatalf("GET * rewritten: %+v", h)
	}
	if _, h := verdict("GET /json HTTP/1.1\r\nHost: c\r\nExpect: 100-Continue\r\n\r\n"); h.rewritten() {
		t.Fatalf("100-continue rewritten: %+v", h)
	}
}

func TestChunkLines(t *testing.T) {
	// tests/test_framing_policy.py's test_a_chunk_line_is_read_strictly, in part.
	for line, want := range map[string]int64{"5\r\n": 5, "0010\r\n": 16, "a;ext=1\r\n": 10,
		"2;a\r\n": 2, "2;a=b;c\r\n": 2, "2;a=\"b;c\\\" d\"\r\n": 2, "2;a=\"\"\r\n": 2, "2;a=\"\xff\"\r\n": 2} {
		if size, ok := checkChunkLine([]byte(line)); !ok || size != want {
			t.Errorf("%q: %d %v", line, size, ok)
		}
	}
	for _, line := range []string{"zz\r\n", "5\n", " 5\r\n", "5 ;x\r\n", strings.Repeat("f", 17) + "\r\n", "\r\n",
		"2;\r\n", "5 \r\n", "2\t\r\n", "2; a\r\n", "2;a \r\n", "2;a = b\r\n", "2;=b\r\n", "2;;a\r\n", "2;a=\r\n",
		"2;a=\"b\r\n", "2;a(\r\n", "2;a=\x7f\r\n", "2;a=\xff\r\n", "2\r\r\n"} {
		if _, ok := checkChunkLine([]byte(line)); ok {
			t.Errorf("%q accepted", line)
		}
	}
}

func TestContractDetails(t *testing.T) {
	if got := cpuDigest(0); got != "737461636b62656e6368" {
		t.Errorf("cpuDigest(0) = %s", got)
	}
	if got := pyJSONString("a\"b\\c\u00e9\x01"); got != `"a\"b\\c\u00e9\u0001"` {
		t.Errorf("%s", got)
	}
	q, _ := parseQuery("m%73=1%30&ms=2&x&n=+1")
	if q["ms"] != "10" || q["x"] != "" || q["n"] != " 1" {
		t.Errorf("%v", q)
	}
	for v, want := range map[float64]string{1: "1.0", 0.00112: "0.00112", 60: "60.0", 1e-5: "1e-05",
		1234567: "1.234567e+06", 0.0005: "0.0005"} {
		if got := goString(v); got != want {
			t.Errorf("goString(%v) = %s, want %s", v, got, want)
		}
	}
}

func TestGoRefusals(t *testing.T) {
	const headers = goRefusalHeaders
	for wire, want := range map[string]rejection{
		"HTTP/1.1 400 Bad Request" + headers + "400 Bad Request":                                               {400, "net/http: Bad Request"},
		"HTTP/1.1 400 Bad Request: malformed Host header" + headers + "400 Bad Request: malformed Host header": {400, "net/http: malformed Host header"},
		"HTTP/1.1 501 Not Implemented" + headers + "Unsupported transfer encoding":                             {501, "net/http: Unsupported transfer encoding"},
	} {
		if !isGoRefusal([]byte(wire)) {
			t.Errorf("not recognised: %q", wire)
		}
		if got := goRefusal([]byte(wire)); *got != want {
			t.Errorf("%q: %+v, want %+v", wire, *got, want)
		}
	}
	if isGoRefusal([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nok")) {
		t.Error("a response taken for a refusal")
	}
}
