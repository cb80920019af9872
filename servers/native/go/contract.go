package main

// The HTTP contract of servers/contract.py: routes, limits, bodies and errors, byte for byte
// (JSON as Python's json.dumps writes it with separators=(",", ":"), query parameters as
// urllib.parse.parse_qsl reads them), so that a client cannot tell the servers apart but for
// X-Stackbench-Impl. How each plan is carried out is handler.go's.

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
	"unicode/utf8"
)

const (
	maxSleepMS       = 60_000
	maxFanoutKids    = 1_000
	maxUpstreamCalls = 100
	maxCPURounds     = 1_000_000
	maxBlockingMS    = 10_000
	maxStreamChunks  = 1_000
	maxBodyBytes     = 1024 * 1024
	maxQueryFields   = 50

	contentText = "text/plain; charset=utf-8"
	contentJSON = "application/json"
	otherRoute  = "other"
)

// routeMethods: the route templates (the only `route` labels besides "other") and their methods.
var routeMethods = map[string][]string{
	"/":         {"GET", "HEAD"},
	"/json":     {"GET", "HEAD"},
	"/sleep":    {"GET", "HEAD"},
	"/fanout":   {"GET", "HEAD"},
	"/cpu":      {"GET", "HEAD"},
	"/blocking": {"GET", "HEAD"},
	"/echo":     {"POST"},
	"/stream":   {"GET", "HEAD"},
	"/healthz":  {"GET", "HEAD"},
	"/metrics":  {"GET", "HEAD"},
	"/lag":      {"GET", "HEAD"},
	"/upstream": {"GET", "HEAD"},
}

var allowHeader = map[string][]string{}

func init() {
	for route, methods := range routeMethods {
		allowHeader[route] = []string{strings.Join(methods, ", ")}
	}
}

type response struct {
	status      int
	body        []byte
	contentType string
	allow       []string // the Allow header of a 405
	close       bool     // the connection cannot carry another request
	length      []string // Content-Length, made once for the constant responses
}

func jsonResponse(body string, status int) *response {
	return &response{status: status, body: []byte(body), contentType: contentJSON}
}

func errorResponse(status int, message string) *response {
	return jsonResponse(`{"error":`+pyJSONString(message)+`}`, status)
}

// The routes whose answer never changes, made once.
var constants = map[string]*response{
	"/":        {status: 200, body: []byte("Hello, World!"), contentType: contentText},
	"/json":    jsonResponse(`{"message":"Hello, World!"}`, 200),
	"/healthz": {status: 200, body: []byte("ok"), contentType: contentText},
}

func init() {
	for _, r := range constants {
		r.length = []string{strconv.Itoa(len(r.body))}
	}
}

type planKind uint8

const (
	planReply planKind = iota
	planSleep
	planFanout
	planUpstream
	planBlocking
	planStream
	planEcho
	planMetrics
	planLag
)

type plan struct {
	kind     planKind
	reply    *response
	ms, n    int  // sleep, fan-out, upstream, stream (n: children, calls, chunks)
	offload  bool // blocking
	kindName string
}

// routePlan routes one request: its `route` label and its plan. (contract.plan)
func routePlan(method, target string) (string, plan) {
	if len(target) == 0 || target[0] != '/' {
		target = originForm(target)
	}
	path, query, _ := strings.Cut(target, "?")
	if c, ok := constants[path]; ok && (method == "GET" || method == "HEAD") {
		return path, plan{kind: planReply, reply: c}
	}
	methods, known := routeMethods[path]
	if !known {
		return otherRoute, reply(errorResponse(404, "no route "+clip(path, 200)))
	}
	allowed := false
	for _, m := range methods {
		allowed = allowed || m == method
	}
	if !allowed {
		r := errorResponse(405, "method "+clip(method, 20)+" not allowed")
		r.allow = allowHeader[path]
		return path, reply(r)
	}
	p, err := planRoute(path, query)
	if err != "" {
		return path, reply(errorResponse(400, err))
	}
	return path, p
}

func reply(r *response) plan { return plan{kind: planReply, reply: r} }

func planRoute(route, query string) (p plan, bad string) {
	params, bad := parseQuery(query)
	if bad != "" {
		return p, bad
	}
	switch route {
	case "/sleep":
		p.kind = planSleep
		p.ms, bad = params.integer("ms", 0, maxSleepMS, -1)
	case "/fanout", "/upstream":
		p.kind = planFanout
		limit := maxFanoutKids
		if route == "/upstream" {
			p.kind, limit = planUpstream, maxUpstreamCalls
		}
		if p.n, bad = params.integer("n", 1, limit, -1); bad == "" {
			p.ms, bad = params.integer("ms", 0, maxSleepMS, -1)
		}
	case "/cpu":
		var rounds int
		if rounds, bad = params.integer("n", 0, maxCPURounds, -1); bad == "" {
			p = reply(jsonResponse(`{"rounds":`+strconv.Itoa(rounds)+`,"digest":"`+cpuDigest(rounds)+`"}`, 200))
		}
	case "/blocking":
		p.kind = planBlocking
		var offload int
		if p.ms, bad = params.integer("ms", 0, maxBlockingMS, -1); bad == "" {
			if offload, bad = params.integer("offload", 0, 1, 1); bad == "" {
				p.offload = offload == 1
				p.kindName, bad = params.choice("kind", "python", "c")
			}
		}
	case "/stream":
		p.kind = planStream
		if p.n, bad = params.integer("chunks", 1, maxStreamChunks, -1); bad == "" {
			p.ms, bad = params.integer("ms", 0, maxSleepMS, -1)
		}
	case "/echo":
		p.kind = planEcho
	case "/metrics":
		p.kind = planMetrics
	case "/lag":
		p.kind = planLag
	}
	return p, bad
}

// originForm: an absolute-form target (`http://host/json?x`) as the path and query it names;
// other forms unchanged. (contract.origin_form)
func originForm(target string) string {
	scheme, rest, found := strings.Cut(target, "://")
	if !found || !(strings.EqualFold(scheme, "http") || strings.EqualFold(scheme, "https")) {
		return target
	}
	slash := strings.IndexByte(rest, '/')
	query := strings.IndexByte(rest, '?')
	if slash < 0 || (0 <= query && query < slash) {
		if query >= 0 {
			return "/" + rest[query:]
		}
		return "/"
	}
	return rest[slash:]
}

// query: parameters as parse_qsl(keep_blank_values=True, max_num_fields=50) reads them; the
// first occurrence of a name wins. Names and values are kept percent-decoded as bytes: every
// value the contract accepts is ASCII, where that and Python's UTF-8 decoding agree.
type query map[string]string

func parseQuery(q string) (query, string) {
	params := query{}
	if q == "" {
		return params, ""
	}
	if 1+strings.Count(q, "&") > maxQueryFields {
		return nil, "more than " + strconv.Itoa(maxQueryFields) + " query parameters"
	}
	for _, pair := range strings.Split(q, "&") {
		if pair == "" {
			continue
		}
		name, value, _ := strings.Cut(pair, "=")
		name, value = unquotePlus(name), unquotePlus(value)
		if _, seen := params[name]; !seen {
			params[name] = value
		}
	}
	return params, ""
}

func unquotePlus(s string) string {
	if strings.IndexByte(s, '+') < 0 && strings.IndexByte(s, '%') < 0 {
		return s
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '+':
			b = append(b, ' ')
		case c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]):
			b = append(b, unhex(s[i+1])<<4|unhex(s[i+2]))
			i += 2
		default:
			b = append(b, c)
		}
	}
	return string(b)
}

func isHex(c byte) bool {
	return isDigit(c) || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

func unhex(c byte) byte {
	switch {
	case isDigit(c):
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// integer: digits only, at most nine, within low..high (def < 0: the parameter is required).
func (q query) integer(name string, low, high, def int) (int, string) {
	raw, ok := q[name]
	if !ok {
		if def < 0 {
			return 0, "missing parameter " + name + " (integer " + strconv.Itoa(low) + ".." + strconv.Itoa(high) + ")"
		}
		return def, ""
	}
	bad := name + " must be an integer " + strconv.Itoa(low) + ".." + strconv.Itoa(high)
	if len(raw) == 0 || len(raw) > 9 {
		return 0, bad
	}
	value := 0
	for i := 0; i < len(raw); i++ {
		if !isDigit(raw[i]) {
			return 0, bad
		}
		value = value*10 + int(raw[i]-'0')
	}
	if value < low || value > high {
		return 0, bad
	}
	return value, ""
}

// choice: one of `choices`, the first by default.
func (q query) choice(name string, choices ...string) (string, string) {
	raw, ok := q[name]
	if !ok {
		return choices[0], ""
	}
	for _, c := range choices {
		if raw == c {
			return raw, ""
		}
	}
	return "", name + " must be one of " + strings.Join(choices, ", ")
}

// cpuDigest: `rounds` chained sha256 hashes of "stackbench", in hex (contract.cpu_digest).
func cpuDigest(rounds int) string {
	if rounds == 0 {
		return hex.EncodeToString([]byte("stackbench"))
	}
	digest := sha256.Sum256([]byte("stackbench"))
	for i := 1; i < rounds; i++ {
		digest = sha256.Sum256(digest[:])
	}
	return hex.EncodeToString(digest[:])
}

// pyJSONString: a JSON string as json.dumps writes it (ensure_ascii: \uXXXX beyond ASCII).
func pyJSONString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\b':
			b.WriteString(`\b`)
		case r == '\f':
			b.WriteString(`\f`)
		case r < 0x20 || (r > 0x7e && r != 0x7f):
			if r == utf8.RuneError {
				r = 0xfffd
			}
			if r > 0xffff {
				r -= 0x10000
				b.WriteString(`\u` + hex4(0xd800+(r>>10)) + `\u` + hex4(0xdc00+(r&0x3ff)))
			} else {
				b.WriteString(`\u` + hex4(r))
			}
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func hex4(r rune) string {
	s := strconv.FormatInt(int64(r), 16)
	return strings.Repeat("0", 4-len(s)) + s
}

func sleepBody(ms int) []byte { return []byte(`{"slept_ms":` + strconv.Itoa(ms) + `}`) }

func fanoutBody(n, ms int) []byte {
	return []byte(`{"children":` + strconv.Itoa(n) + `,"slept_ms":` + strconv.Itoa(ms) + `}`)
}

func blockingBody(ms int, offload bool, kind string) []byte {
	return []byte(`{"blocked_ms":` + strconv.Itoa(ms) + `,"offload":` + strconv.FormatBool(offload) +
		`,"kind":"` + kind + `"}`)
}

func upstreamBody(statuses []int) []byte {
	b := []byte(`{"calls":` + strconv.Itoa(len(statuses)) + `,"status":[`)
	for i, s := range statuses {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(s), 10)
	}
	return append(b, "]}"...)
}

// The responses with a connection that must close (contract.Echo).
var (
	echoTooLarge   = closing(errorResponse(413, "body larger than "+strconv.Itoa(maxBodyBytes)+" bytes"))
	echoTimedOut   = closing(errorResponse(408, "request body too slow"))
	echoIncomplete = closing(errorResponse(400, "request body incomplete or malformed"))
)

func closing(r *response) *response { r.close = true; return r }
