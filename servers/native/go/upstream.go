package main

// GET /upstream through net/http's own client, the Go world's (servers/upstream/__init__.py
// has the rest): one Transport per process with at most `pool` connections to the upstream
// (MaxConnsPerHost: a call beyond them waits for one rather than opening more), kept alive
// 30 s, no proxy from the environment, no compression; one deadline per request for all of
// its calls, the wait for a connection included; structured like /fanout (the calls run in
// goroutines of the request's; the client leaving, one call failing or the deadline passing
// cancels those still running, and the request waits for them to end).
//
// No call is sent twice. The Transport sends a request again, on a new connection, when a
// reused one fails after the request was written but before an answer began, if the request
// is "replayable" (transport.go, shouldRetryRequest): a GET is, when it has no body. Each call
// therefore carries a body that is empty but not http.NoBody and cannot be rewound (no
// GetBody), which makes it not replayable; the Transport still sends it without a body (it
// probes the body, finds it empty, and writes no Content-Length). A request the Transport
// knows it never wrote is not sent again either, where it could be: the Python clients do not
// retry at all (aiohttp's retry is switched off, urllib3 has retries=False).

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"
)

const upstreamKeepAlive = 30 * time.Second // servers.upstream.KEEPALIVE_S

type upstream struct {
	base      string // http://host:port
	timeout   time.Duration
	timeoutS  string // as Python's :g writes it
	transport *http.Transport
}

func newUpstream(base string, pool int, timeout float64) (*upstream, error) {
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, errors.New("--upstream must be an http://host[:port] URL, not " + strconv.Quote(base))
	}
	return &upstream{
		base:     base,
		timeout:  time.Duration(timeout * float64(time.Second)),
		timeoutS: strconv.FormatFloat(timeout, 'g', 6, 64),
		transport: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext,
			MaxConnsPerHost:     pool,
			MaxIdleConns:        pool,
			MaxIdleConnsPerHost: pool,
			IdleConnTimeout:     upstreamKeepAlive,
			DisableCompression:  true,
			ForceAttemptHTTP2:   false,
		},
	}, nil
}

// emptyBody: a request body with nothing in it that the Transport cannot rewind (see above).
type emptyBody struct{}

func (emptyBody) Read([]byte) (int, error) { return 0, io.EOF }
func (emptyBody) Close() error             { return nil }

func (u *upstream) tooSlow() *response {
	return errorResponse(504, "upstream "+u.base+" did not answer within "+u.timeoutS+" s")
}

func (u *upstream) unreachable(why string) *response {
	return errorResponse(502, "upstream "+u.base+" unreachable: "+clip(why, 200))
}

type callResult struct {
	index  int
	status int
	err    error
}

// call makes p.n concurrent calls of GET /sleep?ms=p.ms; the response, or nil if the
// client left (ctx ended).
func (u *upstream) call(ctx context.Context, n, ms int) *response {
	calls, cancel := context.WithTimeout(ctx, u.timeout)
	defer cancel()
	target := u.base + "/sleep?ms=" + strconv.Itoa(ms)
	results := make(chan callResult, n)
	for i := 0; i < n; i++ {
		go func(i int) {
			status, err := u.one(calls, target)
			results <- callResult{i, status, err}
		}(i)
	}
	statuses := make([]int, n)
	var fault *response
	failed := false
	for left := n; left > 0; left-- {
		r := <-results // every call ends soon after `calls` is cancelled
		if r.err == nil {
			statuses[r.index] = r.status
			continue
		}
		if !failed {
			failed, fault = true, u.fault(ctx, calls, r.err)
			cancel() // one call failed (or the deadline passed, or the client left): stop the rest
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	if fault != nil {
		return fault
	}
	return jsonResponse(string(upstreamBody(statuses)), 200)
}

func (u *upstream) one(ctx context.Context, target string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", target, emptyBody{})
	if err != nil {
		return 0, err
	}
	answer, err := u.transport.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	defer answer.Body.Close()
	if _, err := io.Copy(io.Discard, answer.Body); err != nil {
		return 0, err
	}
	return answer.StatusCode, nil
}

// fault: what a failed call answers the request with.
func (u *upstream) fault(ctx, calls context.Context, err error) *response {
	switch {
	case ctx.Err() != nil:
		return nil // the client left
	case errors.Is(calls.Err(), context.DeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return u.tooSlow()
	case errors.Is(err, syscall.ECONNREFUSED):
		return u.unreachable("connection refused")
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return u.unreachable("the connection closed before an answer")
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return u.unreachable(err.Error())
}

func (u *upstream) close() {
	u.transport.CloseIdleConnections()
}
