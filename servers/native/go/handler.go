package main

// The handler: each plan carried out the goroutine way. A request is a goroutine (net/http's,
// one per connection); waiting is a blocking-looking call that parks it (the stackful model,
// as gevent's greenlets, with preemption: a goroutine that computes does not hold the others
// up); a fan-out is a goroutine per child; the client leaving is the request's context ending
// (net/http's background read sees the end of file), which every wait selects on, and a
// request whose client left ends with http.ErrAbortHandler (net/http then closes the
// connection without writing, or logging, more).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

type options struct {
	impl            string
	host            string
	port            int
	drainTimeout    time.Duration
	idleTimeout     time.Duration
	headerTimeout   time.Duration
	maxConnections  int
	cores           int
	metrics         bool
	upstream        string
	upstreamPool    int
	upstreamTimeout float64
}

// bodyTimeout: policy.limit("body"): the header timeout, 60 s at most, from the body's start.
func (o *options) bodyTimeout() time.Duration {
	if o.headerTimeout < 60*time.Second {
		return o.headerTimeout
	}
	return 60 * time.Second
}

type server struct {
	opts       options
	tel        *telemetry
	up         *upstream
	overloaded []byte // lifecycle.overloaded_response
	implHeader []string

	mu    sync.Mutex
	conns map[*conn]struct{}
	open  atomic.Int64
}

type connKey struct{}

var (
	hdrServer  = []string{"stackbench"}
	hdrClose   = []string{"close"}
	hdrJSON    = []string{contentJSON}
	hdrText    = []string{contentText}
	hdrMetrics = []string{metricsContentType}
)

func newServer(opts options) (*server, error) {
	s := &server{
		opts:       opts,
		implHeader: []string{opts.impl},
		conns:      map[*conn]struct{}{},
	}
	s.tel = newTelemetry(opts.metrics, &s.opts, s.openConnections)
	body := `{"error":"too many connections; try again later"}`
	s.overloaded = []byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: " + contentJSON +
		"\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\nX-Stackbench-Impl: " + opts.impl +
		"\r\nConnection: close\r\nRetry-After: 1\r\n\r\n" + body)
	if opts.upstream != "" {
		up, err := newUpstream(opts.upstream, opts.upstreamPool, opts.upstreamTimeout)
		if err != nil {
			return nil, err
		}
		s.up = up
	}
	return s, nil
}

func (s *server) track(c *conn) {
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	s.open.Add(1)
}

func (s *server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.open.Add(-1)
}

func (s *server) openConnections() int { return int(s.open.Load()) }

// closeIdle closes the connections waiting for a request that has not begun (a drain).
func (s *server) closeIdle() {
	s.mu.Lock()
	idle := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		if c.idle() {
			idle = append(idle, c)
		}
	}
	s.mu.Unlock()
	for _, c := range idle {
		c.Close()
	}
}

func abort() { panic(http.ErrAbortHandler) }

var noUpstream = errorResponse(503, "no upstream configured: start the server with --upstream URL")

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c, _ := r.Context().Value(connKey{}).(*conn)
	var sp *special
	if c != nil {
		sp = c.nextRequest()
		defer func() {
			if h := w.Header()["Connection"]; len(h) == 1 && h[0] == "close" {
				c.abandonBody()
			}
			c.requestDone()
		}()
	}
	if sp != nil && sp.refusal != nil {
		s.refuse(w, r, sp.refusal)
		return
	}
	target := r.RequestURI
	if sp != nil {
		target = sp.target
	}
	method := r.Method
	started := s.tel.requestStarted() // before the plan: planning /cpu is its work
	route, p := routePlan(method, target)
	status := clientClosed // stays so if the client leaves first
	defer func() { s.tel.requestFinished(route, method, status, started) }()
	ctx := r.Context()

	switch p.kind {
	case planReply:
		status = s.send(w, r, p.reply)
	case planMetrics:
		status = s.send(w, r, s.tel.exposition())
	case planLag:
		status = s.send(w, r, s.tel.lagResponse())
	case planEcho:
		status = s.send(w, r, s.echo(r, c))
	case planSleep:
		if !sleep(ctx, p.ms) {
			abort()
		}
		status = s.send(w, r, &response{status: 200, body: sleepBody(p.ms), contentType: contentJSON})
	case planFanout:
		if !fanout(ctx, p.n, p.ms) {
			abort()
		}
		status = s.send(w, r, &response{status: 200, body: fanoutBody(p.n, p.ms), contentType: contentJSON})
	case planUpstream:
		answer := noUpstream
		if s.up != nil {
			if answer = s.up.call(ctx, p.n, p.ms); answer == nil {
				abort()
			}
		}
		status = s.send(w, r, answer)
	case planBlocking:
		// offload=0 or 1 alike: only this goroutine (and its thread) waits (blocking.go).
		legacyBlockingCall(p.ms, p.kindName)
		body := blockingBody(p.ms, p.offload, p.kindName)
		status = s.send(w, r, &response{status: 200, body: body, contentType: contentJSON})
	case planStream:
		s.stream(w, r, p)
		status = 200
	}
}

// send writes a whole response: the head every server sends (lifecycle.response_headers;
// net/http adds the Date) and, but for HEAD, the body. Its status.
func (s *server) send(w http.ResponseWriter, r *http.Request, resp *response) int {
	h := w.Header()
	switch resp.contentType {
	case contentJSON:
		h["Content-Type"] = hdrJSON
	case contentText:
		h["Content-Type"] = hdrText
	case metricsContentType:
		h["Content-Type"] = hdrMetrics
	default:
		h["Content-Type"] = []string{resp.contentType}
	}
	if resp.length != nil {
		h["Content-Length"] = resp.length
	} else {
		h["Content-Length"] = []string{strconv.Itoa(len(resp.body))}
	}
	h["Server"] = hdrServer
	h["X-Stackbench-Impl"] = s.implHeader
	if resp.allow != nil {
		h["Allow"] = resp.allow
	}
	if resp.close || r.Close {
		h["Connection"] = hdrClose // the client's, echoed, or this response's own
	}
	w.WriteHeader(resp.status)
	if r.Method != "HEAD" {
		w.Write(resp.body)
	}
	return resp.status
}

// refuse answers a head the framing policy refused (conn.go put a stand-in in its place),
// counts it, logs it in one line; the connection closes after it.
func (s *server) refuse(w http.ResponseWriter, r *http.Request, rej *rejection) {
	started := s.tel.requestStarted()
	s.logRefusal(rej, r.RemoteAddr)
	s.send(w, r, closing(errorResponse(rej.status, clip(rej.message, 200))))
	s.tel.requestFinished(otherRoute, "other", rej.status, started)
}

func (s *server) logRefusal(rej *rejection, peer string) {
	if host, _, err := net.SplitHostPort(peer); err == nil {
		peer = host
	}
	fmt.Fprintf(os.Stderr, "stackbench %s: refused %d from %s: %s\n", s.opts.impl, rej.status, peer, rej.message)
}

// replaceGoRefusal: one of net/http's own plain-text refusals, written instead as the
// contract's (see conn.Write).
func (s *server) replaceGoRefusal(c *conn, p []byte) (int, error) {
	rej := goRefusal(p)
	started := s.tel.requestStarted()
	s.logRefusal(rej, c.RemoteAddr().String())
	resp := errorResponse(rej.status, clip(rej.message, 200))
	wire := "HTTP/1.1 " + strconv.Itoa(rej.status) + " " + http.StatusText(rej.status) +
		"\r\nContent-Type: " + contentJSON + "\r\nContent-Length: " + strconv.Itoa(len(resp.body)) +
		"\r\nDate: " + time.Now().UTC().Format(http.TimeFormat) + "\r\nServer: stackbench" +
		"\r\nX-Stackbench-Impl: " + s.opts.impl + "\r\nConnection: close\r\n\r\n" + string(resp.body)
	_, err := c.TCPConn.Write([]byte(wire))
	s.tel.requestFinished(otherRoute, "other", rej.status, started)
	return len(p), err
}

// echo reads the body (at most maxBodyBytes) and answers it with its content type.
func (s *server) echo(r *http.Request, c *conn) *response {
	if r.ContentLength > maxBodyBytes {
		return echoTooLarge // refused before a byte of it is read (the policy refuses it first)
	}
	var body []byte
	var err error
	if r.ContentLength >= 0 {
		body = make([]byte, r.ContentLength)
		_, err = io.ReadFull(r.Body, body)
	} else { // chunked: read one byte past the limit, to know it was passed
		var buf bytes.Buffer
		if _, err = io.CopyN(&buf, r.Body, maxBodyBytes+1); err == nil {
			return echoTooLarge
		} else if err == io.EOF {
			err = nil
		}
		body = buf.Bytes()
	}
	if err != nil {
		var ne net.Error
		switch {
		case errors.Is(err, errBodyFraming):
			return echoIncomplete
		case errors.As(err, &ne) && ne.Timeout():
			return echoTimedOut // the body timeout (conn.deadline)
		case c != nil && c.peerGone.Load():
			abort() // it left mid-body: 499, as on every server
		}
		return echoIncomplete // net/http's chunked reader refused the framing
	}
	contentType := r.Header.Get("Content-Type")
	if contentType == "" {
		contentType = "application/octet-stream"
	}
	return &response{status: 200, body: body, contentType: contentType}
}

// stream: a chunked response, a chunk every p.ms.
func (s *server) stream(w http.ResponseWriter, r *http.Request, p plan) {
	h := w.Header()
	h["Content-Type"] = hdrText
	h["Server"] = hdrServer
	h["X-Stackbench-Impl"] = s.implHeader
	if r.Close {
		h["Connection"] = hdrClose
	}
	w.WriteHeader(200)
	if r.Method == "HEAD" {
		return
	}
	flusher := w.(http.Flusher)
	for i := 0; i < p.n; i++ {
		if i > 0 && !sleep(r.Context(), p.ms) {
			abort()
		}
		w.Write([]byte("chunk " + strconv.Itoa(i) + "\n"))
		flusher.Flush()
	}
}

// sleep waits ms, or less if ctx ends first (false).
func sleep(ctx context.Context, ms int) bool {
	if ms == 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(time.Duration(ms) * time.Millisecond)
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		timer.Stop()
		return false
	}
}

// fanout: n child goroutines that each wait ms; structured: if ctx ends (the client left),
// every child is cancelled, and fanout returns (false) once all have ended.
func fanout(ctx context.Context, n, ms int) bool {
	children, cancel := context.WithCancel(ctx)
	defer cancel()
	ended := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		go func() {
			sleep(children, ms)
			ended <- struct{}{}
		}()
	}
	for left := n; left > 0; left-- {
		select {
		case <-ended:
		case <-ctx.Done():
			cancel()
			for ; left > 0; left-- {
				<-ended
			}
			return false
		}
	}
	return true
}
