package main

// The framing policy of servers/protocol/framing.py, in Go: which request heads every
// stackbench server refuses, and with what status. net/http's own parser is lenient where the
// policy is not (obsolete line folding, `get` as a method, a bare LF, a repeated
// Content-Length of one value, a Transfer-Encoding on HTTP/1.0...) and answers what it does
// refuse in plain text, without the contract's headers; so every head is checked here first,
// by the connection (conn.go), before net/http reads a byte of it. This is parse_head and
// check_request, rule for rule and in the same order.

import (
	"bytes"
	"net/url"
	"strconv"
)

const (
	maxRequestLineBytes = 8 * 1024 // its CRLF included; longer: 414
	maxHeadBytes        = 64 * 1024
	maxHeaderCount      = 100
	maxFieldBytes       = 8190 // a field's name and value together
	maxChunkLineBytes   = 4096 // net/http's own limit on a chunk-size line
)

type rejection struct {
	status  int
	message string
}

var (
	rejLineTooLong = &rejection{414, "request line longer than " + strconv.Itoa(maxRequestLineBytes) + " bytes"}
	rejHeadTooLong = &rejection{431, "request head larger than " + strconv.Itoa(maxHeadBytes) + " bytes"}
	rejBareLF      = &rejection{400, "a line ended by a bare LF (not CRLF)"}
	rejRequestLine = &rejection{400, "malformed request line"}
	rejFieldLine   = &rejection{400, "malformed header line"}
	rejFolding     = &rejection{400, "obsolete line folding (a header line starting with whitespace)"}
	rejAsterisk    = &rejection{400, "the asterisk-form is for OPTIONS only"}
)

// RFC 9110 section 5.6.2: tchar.
var tokenChar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return
}()

// RFC 9110 section 5.5: a field value's bytes (visible, SP, HTAB, obs-text).
var valueChar = func() (t [256]bool) {
	for c := 0; c < 256; c++ {
		t[c] = !(c <= 0x08 || (c >= 0x0a && c <= 0x1f) || c == 0x7f)
	}
	return
}()

// The Host bytes net/http accepts (golang.org/x/net/http/httpguts.ValidHostHeader).
var goHostChar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!$%&()*+,-.:;=[]'_~" {
		t[c] = true
	}
	return
}()

var knownMethods = map[string]bool{
	"GET": true, "HEAD": true, "POST": true, "PUT": true, "DELETE": true, "PATCH": true, "OPTIONS": true,
}

// Fields that may appear once (framing.SINGLETON_FIELDS).
var singletons = []string{
	"content-length", "content-location", "content-range", "content-type", "etag",
	"host", "max-forwards", "server", "transfer-encoding", "user-agent",
}

const (
	fieldContentLength = 0
	fieldHost          = 5
	fieldTE            = 8
	fieldOther         = -1
	// Fields outside the policy that net/http reads in its own way (see goSafe).
	fieldExpect  = -2
	fieldTrailer = -3
)

// fieldKind: which singleton `name` is (any case), fieldExpect or fieldTrailer, or fieldOther.
func fieldKind(name []byte) int {
	switch len(name) {
	case 4:
		if equalFold(name, "host") {
			return fieldHost
		}
		if equalFold(name, "etag") {
			return 4
		}
	case 6:
		if equalFold(name, "server") {
			return 7
		}
		if equalFold(name, "expect") {
			return fieldExpect
		}
	case 7:
		if equalFold(name, "trailer") {
			return fieldTrailer
		}
	case 10:
		if equalFold(name, "user-agent") {
			return 9
		}
	case 12:
		if equalFold(name, "content-type") {
			return 3
		}
		if equalFold(name, "max-forwards") {
			return 6
		}
	case 13:
		if equalFold(name, "content-range") {
			return 2
		}
	case 14:
		if equalFold(name, "content-length") {
			return fieldContentLength
		}
	case 16:
		if equalFold(name, "content-location") {
			return 1
		}
	case 17:
		if equalFold(name, "transfer-encoding") {
			return fieldTE
		}
	}
	return fieldOther
}

// equalFold: whether ASCII `b` equals lower-case `s` in any case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// head: what the policy found in a head it accepts.
type head struct {
	isHEAD        bool
	contentLength int64 // -1: none
	chunked       bool
	// What net/http would refuse although the policy accepts it, or read otherwise than the
	// contract's servers do: the head is handed to net/http rewritten (see rewrite).
	targetReplaced bool // a target net/http refuses or answers itself: handed over as "/"
	hostUnusable   bool // a Host net/http refuses (`fu zz`, obs-text): handed over as "invalid"
	dropExpect     bool // an Expect other than 100-continue (net/http would answer 417)
	dropTrailer    bool // a Trailer field (net/http refuses some names in it)
}

func (h *head) rewritten() bool {
	return h.targetReplaced || h.hostUnusable || h.dropExpect || h.dropTrailer
}

// scanHead looks for the end of the head at the start of `b` (the bytes received since the
// head began), applying the limits that hold before a head is complete, as gevent's reader
// does line by line: a request line over its limit, a head over its limit, a line ended by a
// bare LF. `from` and `lines` carry the progress of earlier calls over the same head (the
// offset of the first line not yet seen, the count of lines seen). Returns the head's length
// (its blank line included) or 0 if more bytes are needed.
func scanHead(b []byte, from, lines *int) (int, *rejection) {
	for {
		i := bytes.IndexByte(b[*from:], '\n')
		if i < 0 {
			if *lines == 0 && len(b) > maxRequestLineBytes {
				return 0, rejLineTooLong
			}
			if len(b) > maxHeadBytes {
				return 0, rejHeadTooLong
			}
			return 0, nil
		}
		end := *from + i + 1
		if *lines == 0 && end > maxRequestLineBytes {
			return 0, rejLineTooLong
		}
		if end > maxHeadBytes {
			return 0, rejHeadTooLong
		}
		if i == 0 || b[end-2] != '\r' {
			return 0, rejBareLF
		}
		if i == 1 && *lines > 0 {
			return end, nil // the blank line
		}
		*lines++
		*from = end
	}
}

// checkHead applies the policy to a complete head (what scanHead measured, CRLFs included):
// framing.parse_head, then framing.check_request.
func checkHead(b []byte) (h head, rej *rejection) {
	h.contentLength = -1
	lineEnd := bytes.Index(b, crlf)
	line := b[:lineEnd]
	// (TOKEN) ([\x21-\x7e]+) HTTP/(\d)\.(\d)
	m := 0
	for m < len(line) && tokenChar[line[m]] {
		m++
	}
	if m == 0 || m == len(line) || line[m] != ' ' {
		return h, rejRequestLine
	}
	t := m + 1
	u := t
	for u < len(line) && line[u] >= 0x21 && line[u] <= 0x7e {
		u++
	}
	if u == t || u == len(line) || line[u] != ' ' {
		return h, rejRequestLine
	}
	version := line[u+1:]
	if len(version) != 8 || string(version[:5]) != "HTTP/" || !isDigit(version[5]) ||
		version[6] != '.' || !isDigit(version[7]) {
		return h, rejRequestLine
	}
	method, target := line[:m], line[t:u]
	h.isHEAD = string(method) == "HEAD"

	// The field lines: (TOKEN):[ \t]*(value*?)[ \t]*
	type field struct {
		kind        int
		name, value []byte
	}
	var fields [32]field
	list := fields[:0]
	for at := lineEnd + 2; at < len(b)-2; {
		end := at + bytes.Index(b[at:], crlf)
		l := b[at:end]
		at = end + 2
		n := 0
		for n < len(l) && tokenChar[l[n]] {
			n++
		}
		if n == 0 || n == len(l) || l[n] != ':' {
			if len(l) > 0 && (l[0] == ' ' || l[0] == '\t') {
				return h, rejFolding
			}
			return h, rejFieldLine
		}
		v := l[n+1:]
		for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
			v = v[1:]
		}
		for _, c := range v {
			if !valueChar[c] {
				return h, rejFieldLine
			}
		}
		for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
			v = v[:len(v)-1]
		}
		list = append(list, field{fieldKind(l[:n]), l[:n], v})
	}

	// check_request
	if version[5] != '1' || (version[7] != '1' && version[7] != '0') {
		return h, &rejection{505, "HTTP/" + string(version[5:]) + " not supported"}
	}
	http11 := version[7] == '1'
	if !knownMethods[string(method)] {
		return h, &rejection{501, "method " + clip(string(method), 20) + " not implemented"}
	}
	if string(target) == "*" && string(method) != "OPTIONS" { // RFC 9112 section 3.2.4
		return h, rejAsterisk
	}
	var seen uint16
	repeated := -1
	var host []byte
	var lengths, codings [][]byte
	for _, f := range list {
		if len(f.name)+len(f.value) > maxFieldBytes {
			return h, &rejection{431, "a header field longer than " + strconv.Itoa(maxFieldBytes) + " bytes"}
		}
		switch {
		case f.kind >= 0:
			if seen&(1<<f.kind) != 0 {
				repeated = f.kind
			}
			seen |= 1 << f.kind
			switch f.kind {
			case fieldContentLength:
				lengths = append(lengths, f.value)
			case fieldTE:
				codings = append(codings, f.value)
			case fieldHost:
				host = f.value
			}
		case f.kind == fieldExpect:
			if !equalFold(f.value, "100-continue") {
				h.dropExpect = true
			}
		case f.kind == fieldTrailer:
			h.dropTrailer = true
		}
	}
	if len(list) > maxHeaderCount {
		return h, &rejection{431, "more than " + strconv.Itoa(maxHeaderCount) + " header fields"}
	}
	if repeated >= 0 {
		return h, &rejection{400, "repeated " + singletons[repeated] + " header"}
	}
	if seen&(1<<fieldHost) == 0 && http11 {
		return h, &rejection{400, "HTTP/1.1 needs a Host header"}
	}
	if len(codings) > 0 {
		if rej := checkTransferCoding(http11, codings, lengths); rej != nil {
			return h, rej
		}
		h.chunked = true
	} else if len(lengths) > 0 {
		length, rej := contentLength(lengths[0])
		if rej != nil {
			return h, rej
		}
		h.contentLength = length
	}

	// Accepted. What net/http would still refuse, or answer on its own:
	if target[0] != '/' || bytes.IndexByte(target, '%') >= 0 {
		if _, err := url.ParseRequestURI(string(target)); err != nil {
			h.targetReplaced = true // `GET json`, `/%zz`, `http://h:port-less/`
		} else if string(target) == "*" && string(method) == "OPTIONS" {
			// net/http's server answers `OPTIONS *` itself (globalOptionsHandler: 200, no
			// body) without calling the handler; the contract's answer is a 404, recorded.
			h.targetReplaced = true
		}
	}
	for _, c := range host {
		if !goHostChar[c] {
			h.hostUnusable = true
			break
		}
	}
	return h, nil
}

func checkTransferCoding(http11 bool, codings, lengths [][]byte) *rejection {
	// RFC 9112 section 6.3: with Content-Length too, the framing is ambiguous; in HTTP/1.0
	// Transfer-Encoding is not defined; chunked must come last, and only once.
	if len(lengths) > 0 {
		return &rejection{400, "Content-Length and Transfer-Encoding together"}
	}
	if !http11 {
		return &rejection{400, "Transfer-Encoding in an HTTP/1.0 request"}
	}
	var tokens [][]byte
	for _, value := range codings {
		for _, token := range bytes.Split(value, []byte(",")) {
			tokens = append(tokens, bytes.Trim(token, " \t"))
		}
	}
	chunked := 0
	for _, token := range tokens {
		if len(token) == 0 {
			return &rejection{400, "an empty transfer coding"}
		}
		if equalFold(token, "chunked") {
			chunked++
		}
	}
	if !equalFold(tokens[len(tokens)-1], "chunked") || chunked > 1 {
		return &rejection{400, "chunked must be the final transfer coding, once"}
	}
	if len(tokens) > 1 {
		return &rejection{501, "only the chunked transfer coding is supported"}
	}
	return nil
}

// contentLength: one decimal number, no sign, no spaces inside; over the body limit is 413.
func contentLength(value []byte) (int64, *rejection) {
	if len(value) == 0 {
		return 0, &rejection{400, "malformed Content-Length"}
	}
	for _, c := range value {
		if !isDigit(c) {
			return 0, &rejection{400, "malformed Content-Length"}
		}
	}
	digits := bytes.TrimLeft(value, "0")
	if len(digits) > 9 {
		return 0, rejBodyTooLarge
	}
	var n int64
	for _, c := range digits {
		n = n*10 + int64(c-'0')
	}
	if n > maxBodyBytes {
		return 0, rejBodyTooLarge
	}
	return n, nil
}

var rejBodyTooLarge = &rejection{413, "body larger than " + strconv.Itoa(maxBodyBytes) + " bytes"}

// rewrite: the head as net/http can read it (see head's fields): the target, the Host, the
// Expect and Trailer fields changed; the rest as received.
func rewrite(b []byte, h *head) []byte {
	out := make([]byte, 0, len(b)+16)
	lineEnd := bytes.Index(b, crlf)
	line := b[:lineEnd]
	if h.targetReplaced {
		sp := bytes.IndexByte(line, ' ')
		last := bytes.LastIndexByte(line, ' ')
		out = append(out, line[:sp]...)
		out = append(out, " /"...)
		out = append(out, line[last:]...)
	} else {
		out = append(out, line...)
	}
	out = append(out, crlf...)
	for at := lineEnd + 2; at < len(b)-2; {
		end := at + bytes.Index(b[at:], crlf)
		l := b[at : end+2]
		at = end + 2
		colon := bytes.IndexByte(l, ':')
		switch fieldKind(l[:colon]) {
		case fieldHost:
			if h.hostUnusable {
				out = append(out, "Host: invalid\r\n"...)
				continue
			}
		case fieldExpect:
			if h.dropExpect {
				continue
			}
		case fieldTrailer:
			continue
		}
		out = append(out, l...)
	}
	return append(out, crlf...)
}

// checkChunkLine: a chunk-size line (CRLF included) as framing.check_chunk_line reads it:
// 1 to 16 hex digits, then extensions `;name` or `;name=value` (a token, or a quoted-string),
// no whitespace anywhere, CRLF. Its size, or ok=false.
func checkChunkLine(l []byte) (size int64, ok bool) {
	if len(l) < 3 || l[len(l)-2] != '\r' {
		return 0, false
	}
	l = l[:len(l)-2]
	i := 0
	for ; i < len(l); i++ {
		c := l[i]
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			goto rest
		}
		if i == 16 {
			return 0, false // net/http: "http chunk length too large"
		}
		size = size<<4 | int64(d)
	}
rest:
	if i == 0 || size < 0 {
		return 0, false
	}
	if !chunkExtensions(l[i:]) {
		return 0, false
	}
	return size, true
}

// chunkExtensions: whether `l` is *( ";" token [ "=" ( token / quoted-string ) ] ).
func chunkExtensions(l []byte) bool {
	token := func(at int) int { // the end of the token at `at` (at itself: none)
		for at < len(l) && tokenChar[l[at]] {
			at++
		}
		return at
	}
	for at := 0; at < len(l); {
		if l[at] != ';' {
			return false
		}
		end := token(at + 1)
		if end == at+1 {
			return false // an extension without a name
		}
		at = end
		if at == len(l) || l[at] != '=' {
			continue
		}
		at++
		if at < len(l) && l[at] == '"' {
			if at = quotedStringEnd(l, at); at < 0 {
				return false
			}
			continue
		}
		if end = token(at); end == at {
			return false // `=` without a value
		}
		at = end
	}
	return true
}

// quotedStringEnd: the end of the quoted-string (RFC 9110 section 5.6.4) starting at l[at]
// (its opening quote), or -1.
func quotedStringEnd(l []byte, at int) int {
	for at++; at < len(l); at++ {
		c := l[at]
		switch {
		case c == '"':
			return at + 1
		case c == '\\':
			at++
			if at == len(l) || !(l[at] == '\t' || l[at] >= 0x20 && l[at] != 0x7f) {
				return -1
			}
		case !(c == '\t' || c >= 0x20 && c != 0x7f):
			return -1
		}
	}
	return -1
}

// checkTrailerLine: a trailer field line (CRLF included), held to a header line's syntax.
func checkTrailerLine(l []byte) bool {
	if len(l) < 2 || l[len(l)-2] != '\r' {
		return false
	}
	l = l[:len(l)-2]
	n := 0
	for n < len(l) && tokenChar[l[n]] {
		n++
	}
	if n == 0 || n == len(l) || l[n] != ':' {
		return false
	}
	for _, c := range l[n+1:] {
		if !valueChar[c] {
			return false
		}
	}
	return true
}

var crlf = []byte("\r\n")

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
