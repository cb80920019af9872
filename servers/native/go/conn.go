package main

// The connection under net/http: what every stackbench server does to its connections and
// net/http does not, or not the same way.
//
//   - The framing policy (policy.go). Read holds a request head back until all of it has
//     arrived and passed the policy, then hands it to net/http. A refused head never reaches
//     net/http: a stand-in request does (`GET / HTTP/1.1`, or HEAD for a HEAD), which the
//     handler recognises by its place on the connection and answers with the refusal; nothing
//     after it on the connection is read as a request. Bodies pass through as they arrive,
//     tracked (Content-Length, chunked framing) so that the next head is found where net/http
//     will look for it; chunked framing net/http would read differently is an error.
//   - The policy's timeouts (servers/protocol/policy.py): idle before a request's first byte
//     (not while a request is handled), the header timeout from that byte, the body timeout
//     from the body's start. Read sets them as read deadlines; net/http's own timeouts are off
//     (its ReadHeaderTimeout also runs before the first byte, and its idle timeout waits for
//     four bytes).
//   - Closing without a reset: Close half-closes, then reads and drops what the client still
//     sends for at most lingerTime before closing, so that a response is never destroyed by
//     the reset a close with unread input sends. (net/http does half-close and wait 500 ms,
//     but only when the handler left a body unread: a refused request followed by a pipelined
//     one, or `Connection: close` with more behind it, was closed at once.)

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const lingerTime = 500 * time.Millisecond // policy.REFUSED_BODY_LINGER_S and SHED_LINGER_S

type readState uint8

const (
	stHead      readState = iota // a request head, or the wait for one
	stBody                       // bodyLeft bytes of a Content-Length body
	stChunkSize                  // a chunk-size line
	stChunkData                  // bodyLeft bytes of chunk data
	stChunkEnd                   // the CRLF after chunk data
	stTrailer                    // trailer fields, up to the blank line
	stRefused                    // a refused head was replaced: drop the rest
)

// errBodyFraming: a chunked body whose framing is broken (the handler answers 400).
var errBodyFraming = errors.New("request body framing broken")

// errConnClosed: what Read answers once the connection is closed (a read error net/http
// closes on quietly).
var errConnClosed = &net.OpError{Op: "read", Net: "tcp", Err: net.ErrClosed}

var aLongTimeAgo = time.Unix(1, 0)

// Stand-ins for a refused head (see the top of the file).
var (
	refusedGET  = []byte("GET / HTTP/1.1\r\nHost: stackbench\r\n\r\n")
	refusedHEAD = []byte("HEAD / HTTP/1.1\r\nHost: stackbench\r\n\r\n")
)

const bufSize = 4096

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// special: a request whose head net/http does not see as received: refused, or rewritten
// (the handler then takes the target from here).
type special struct {
	seq     int64
	refusal *rejection
	target  string
}

type conn struct {
	*net.TCPConn
	srv *server

	// Reading, under readMu (net/http reads one at a time; the lock is for linger).
	readMu    sync.Mutex
	buf       []byte // received, not yet released: buf[r:w] (pooled; nil while empty)
	pooled    *[]byte
	r, w      int
	out       []byte // released to net/http, not yet read by it
	outHead   bool   // out is (the rest of) a head
	state     readState
	scanFrom  int   // scanHead's progress over the current head
	scanLines int   //
	headBegan int64 // when the current head's first byte arrived (unix ns; 0: not yet)
	bodyBegan int64
	bodyLeft  int64
	trailer   int   // trailer bytes so far
	sticky    error // end of file, a reset, broken framing: every later Read answers it

	last *acceptedHead // the last head accepted on this connection (see remembered)

	released    atomic.Int64 // heads handed to net/http
	consumed    atomic.Int64 // heads net/http has read to their end
	finished    atomic.Int64 // requests whose handler has returned
	idleSince   atomic.Int64 // when the last handler returned (or the connection opened)
	idleWaiting atomic.Bool  // blocked reading, nothing of a next head received
	peerGone    atomic.Bool  // end of file or a reset from the client
	closed      atomic.Bool

	started int64 // requests the handler has begun (the handler's goroutine only)

	spMu     sync.Mutex
	specials []special
	nSpecial atomic.Int32

	dlMu       sync.Mutex
	goDeadline time.Time // the read deadline net/http asked for (its abortPendingRead)
	applied    time.Time // the read deadline the socket has
}

func newConn(c *net.TCPConn, srv *server) *conn {
	cn := &conn{TCPConn: c, srv: srv}
	cn.idleSince.Store(time.Now().UnixNano())
	return cn
}

// Read hands net/http what it may read: released heads (or their stand-ins) and body bytes.
func (c *conn) Read(p []byte) (int, error) {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	for {
		if len(c.out) > 0 {
			n := copy(p, c.out)
			c.out = c.out[n:]
			if len(c.out) == 0 {
				if c.outHead {
					c.outHead = false
					c.consumed.Add(1)
				}
				if c.r == c.w {
					c.releaseBuf()
				}
			}
			return n, nil
		}
		if c.closed.Load() {
			return 0, errConnClosed
		}
		if c.state == stBody && c.r == c.w && c.sticky == nil {
			// A Content-Length body with nothing buffered: straight into net/http's buffer.
			if c.buf != nil {
				c.releaseBuf()
			}
			if int64(len(p)) > c.bodyLeft {
				p = p[:c.bodyLeft]
			}
			n, err := c.readSocket(p, c.deadline())
			if n > 0 {
				c.bodyLeft -= int64(n)
				if c.bodyLeft == 0 {
					c.endMessage()
				}
				return n, nil
			}
			return 0, c.failed(err)
		}
		if err := c.advance(); err != nil {
			return 0, err
		}
		if len(c.out) > 0 {
			continue
		}
		if c.sticky != nil {
			return 0, c.sticky
		}
		if err := c.fill(len(p)); err != nil {
			return 0, err
		}
	}
}

// failed: a socket read error as Read answers it (end of file and resets stay).
func (c *conn) failed(err error) error {
	if err == nil {
		return nil
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return err // a deadline (the policy's, or net/http's abort): not for ever
	}
	c.peerGone.Store(true)
	c.sticky = err
	return err
}

// fill reads more of the socket into buf.
func (c *conn) fill(want int) error {
	deadline := c.deadline()
	waiting := c.state == stHead && c.r == c.w
	if c.buf == nil && waiting && want == 1 {
		// net/http's background read, while a handler runs: wait for a next request without
		// holding a buffer (a connection with a request in flight holds no more than this).
		var one [1]byte
		c.idleWaiting.Store(true)
		n, err := c.readSocket(one[:], deadline)
		c.idleWaiting.Store(false)
		if n == 0 {
			return c.failed(err)
		}
		c.takeBuf()
		c.buf[0] = one[0]
		c.w = 1
		return nil
	}
	if c.buf == nil {
		c.takeBuf()
	}
	if c.r == c.w {
		c.r, c.w = 0, 0
	} else if c.w == len(c.buf) {
		if c.r > 0 {
			c.w = copy(c.buf, c.buf[c.r:c.w]) // (scanHead's offsets are relative to r)
			c.r = 0
		} else { // a head larger than the buffer
			bigger := make([]byte, 2*len(c.buf))
			w := copy(bigger, c.buf[:c.w])
			c.releaseBuf()
			c.buf, c.w = bigger, w
		}
	}
	c.idleWaiting.Store(waiting)
	n, err := c.readSocket(c.buf[c.w:], deadline)
	c.idleWaiting.Store(false)
	c.w += n
	if n > 0 {
		return nil
	}
	return c.failed(err)
}

func (c *conn) takeBuf() {
	c.pooled = bufPool.Get().(*[]byte)
	c.buf = *c.pooled
	c.r, c.w = 0, 0
}

func (c *conn) releaseBuf() {
	if c.pooled != nil && len(c.buf) == bufSize {
		bufPool.Put(c.pooled)
	}
	c.buf, c.pooled = nil, nil
	c.r, c.w = 0, 0
}

// advance releases what the buffered bytes allow: body bytes and framing as far as they are
// complete, or the next head once all of it is in (sets out, or returns an error).
func (c *conn) advance() error {
	start := c.r // bytes released as received are contiguous: out = buf[start:r]
	for c.r < c.w {
		switch c.state {
		case stHead:
			if c.r > start {
				c.out = c.buf[start:c.r] // a head goes out on its own (it may be replaced)
				return nil
			}
			return c.advanceHead()
		case stBody, stChunkData:
			n := int64(c.w - c.r)
			if n > c.bodyLeft {
				n = c.bodyLeft
			}
			c.r += int(n)
			c.bodyLeft -= n
			if c.bodyLeft == 0 {
				if c.state == stBody {
					c.endMessage()
				} else {
					c.state = stChunkEnd
				}
			}
		case stChunkSize, stTrailer:
			i := bytes.IndexByte(c.buf[c.r:c.w], '\n')
			if i < 0 {
				if c.w-c.r >= maxChunkLineBytes {
					return c.broken(start)
				}
				c.out = c.buf[start:c.r]
				return nil
			}
			line := c.buf[c.r : c.r+i+1]
			if c.state == stChunkSize {
				size, ok := checkChunkLine(line)
				if !ok || len(line) >= maxChunkLineBytes {
					return c.broken(start)
				}
				c.r += len(line)
				if size == 0 {
					c.state, c.trailer = stTrailer, 0
				} else {
					c.state, c.bodyLeft = stChunkData, size
				}
				continue
			}
			c.r += len(line)
			if len(line) == 2 && line[0] == '\r' {
				c.endMessage()
				continue
			}
			c.trailer += len(line)
			if !checkTrailerLine(line) || c.trailer > maxChunkLineBytes {
				c.r -= len(line)
				return c.broken(start)
			}
		case stChunkEnd:
			if c.buf[c.r] != '\r' || (c.w-c.r >= 2 && c.buf[c.r+1] != '\n') {
				return c.broken(start)
			}
			if c.w-c.r < 2 {
				c.out = c.buf[start:c.r]
				return nil
			}
			c.r += 2
			c.state = stChunkSize
		case stRefused:
			c.r = c.w // dropped
			return nil
		}
	}
	c.out = c.buf[start:c.r]
	return nil
}

// broken: chunked framing the policy does not read as net/http would. What came before it
// goes out first; then every read fails.
func (c *conn) broken(start int) error {
	c.sticky = errBodyFraming
	c.out = c.buf[start:c.r]
	if len(c.out) > 0 {
		return nil
	}
	return errBodyFraming
}

func (c *conn) endMessage() {
	c.state = stHead
	c.scanFrom, c.scanLines, c.headBegan = 0, 0, 0
}

// acceptedHead: a head the policy accepted, and what it found in it.
type acceptedHead struct {
	raw string
	h   head
}

// acceptedHeads: heads the policy has accepted, by their bytes (framing.AcceptedHeads, as the
// h11 servers keep them): load generators send the same head every time, and a head seen
// before is not scanned and checked again. Bounded as there: heads over
// maxRememberedHeadBytes are not kept, and past rememberedHeads the set starts again.
var acceptedHeads = struct {
	sync.RWMutex
	m map[string]*acceptedHead
}{m: map[string]*acceptedHead{}}

const (
	maxRememberedHeadBytes = 2048
	rememberedHeads        = 1024
)

var blankLine = []byte("\r\n\r\n")

// remembered: the head at the start of data, if the policy has accepted these bytes before
// (the connection's last head first): the same bytes up to the blank line get the same
// verdict, since scanHead and checkHead read no further.
func (c *conn) remembered(data []byte) *acceptedHead {
	if a := c.last; a != nil && len(data) >= len(a.raw) && string(data[:len(a.raw)]) == a.raw {
		return a
	}
	if len(data) > maxRememberedHeadBytes {
		data = data[:maxRememberedHeadBytes]
	}
	end := bytes.Index(data, blankLine)
	if end < 0 {
		return nil
	}
	acceptedHeads.RLock()
	a := acceptedHeads.m[string(data[:end+4])]
	acceptedHeads.RUnlock()
	return a
}

func remember(raw []byte, h head) *acceptedHead {
	a := &acceptedHead{raw: string(raw), h: h}
	if len(raw) <= maxRememberedHeadBytes {
		acceptedHeads.Lock()
		if len(acceptedHeads.m) >= rememberedHeads {
			acceptedHeads.m = map[string]*acceptedHead{}
		}
		acceptedHeads.m[a.raw] = a
		acceptedHeads.Unlock()
	}
	return a
}

// advanceHead: the next head, once complete and checked, or its stand-in.
func (c *conn) advanceHead() error {
	for c.scanLines == 0 && c.scanFrom == 0 && c.w-c.r >= 2 && c.buf[c.r] == '\r' && c.buf[c.r+1] == '\n' {
		c.r += 2 // RFC 9112 section 2.2: empty lines before a request line are ignored
	}
	data := c.buf[c.r:c.w]
	var h head
	var end int
	var rej *rejection
	var a *acceptedHead
	if c.scanFrom == 0 && c.scanLines == 0 {
		a = c.remembered(data)
	}
	if a != nil {
		end, h, c.last = len(a.raw), a.h, a
	} else {
		end, rej = scanHead(data, &c.scanFrom, &c.scanLines)
		if rej == nil && end == 0 {
			if c.headBegan == 0 {
				c.headBegan = time.Now().UnixNano() // the header timeout counts from here
			}
			return nil // more to come
		}
		if rej == nil {
			if h, rej = checkHead(data[:end]); rej == nil {
				c.last = remember(data[:end], h)
			}
		}
	}
	seq := c.released.Add(1)
	c.outHead = true
	if rej != nil {
		c.out = refusedGET
		if h.isHEAD {
			c.out = refusedHEAD
		}
		c.addSpecial(special{seq: seq, refusal: rej})
		c.state = stRefused
		c.r = c.w
		return nil
	}
	if h.rewritten() {
		c.out = rewrite(data[:end], &h)
		c.addSpecial(special{seq: seq, target: string(requestTarget(data[:end]))})
	} else {
		c.out = data[:end]
	}
	c.r += end
	c.scanFrom, c.scanLines, c.headBegan = 0, 0, 0
	switch {
	case h.chunked:
		c.state, c.bodyBegan = stChunkSize, time.Now().UnixNano()
	case h.contentLength > 0:
		c.state, c.bodyBegan, c.bodyLeft = stBody, time.Now().UnixNano(), h.contentLength
	}
	return nil
}

func requestTarget(b []byte) []byte {
	line := b[:bytes.Index(b, crlf)]
	return line[bytes.IndexByte(line, ' ')+1 : bytes.LastIndexByte(line, ' ')]
}

func (c *conn) addSpecial(s special) {
	c.spMu.Lock()
	c.specials = append(c.specials, s)
	c.spMu.Unlock()
	c.nSpecial.Add(1)
}

// nextRequest: called by the handler as each request begins; the request's special, if any.
func (c *conn) nextRequest() *special {
	c.started++
	if c.nSpecial.Load() == 0 {
		return nil
	}
	c.spMu.Lock()
	defer c.spMu.Unlock()
	for i, s := range c.specials {
		if s.seq == c.started {
			c.specials = append(c.specials[:i], c.specials[i+1:]...)
			c.nSpecial.Add(-1)
			return &s
		}
	}
	return nil
}

// abandonBody: the response closes the connection: what is left of the request's body will
// not be read. (net/http would read and drop up to 256 KiB of it before closing, waiting on a
// client that may have stopped sending: until the body timeout.) A read in progress means the
// body has all been read already (net/http's background read begins at its end).
func (c *conn) abandonBody() {
	if !c.readMu.TryLock() {
		return
	}
	if c.state != stHead && c.state != stRefused {
		c.state, c.out, c.outHead, c.r, c.w = stRefused, nil, false, 0, 0
		c.sticky = io.EOF
	}
	c.readMu.Unlock()
}

// requestDone: the handler has returned; the idle timeout counts from now.
func (c *conn) requestDone() {
	c.idleSince.Store(time.Now().UnixNano())
	c.finished.Add(1)
}

// deadline: the policy's deadline for the read about to be made (zero: none).
func (c *conn) deadline() time.Time {
	opts := &c.srv.opts
	inFlight := c.released.Load() > c.finished.Load()
	switch c.state {
	case stHead:
		if inFlight {
			return time.Time{} // handling a request has no such limit
		}
		idle := c.idleSince.Load()
		if c.w > c.r { // the head has begun
			began := c.headBegan
			if began < idle {
				began = idle
			}
			return time.Unix(0, began).Add(opts.headerTimeout)
		}
		return time.Unix(0, idle).Add(opts.idleTimeout)
	case stRefused:
		return time.Time{}
	}
	return time.Unix(0, c.bodyBegan).Add(opts.bodyTimeout())
}

// readSocket reads with `policy` (or net/http's own deadline, if it is sooner).
func (c *conn) readSocket(b []byte, policy time.Time) (int, error) {
	c.dlMu.Lock()
	if c.closed.Load() {
		c.dlMu.Unlock()
		return 0, errConnClosed
	}
	d := policy
	if !c.goDeadline.IsZero() && (d.IsZero() || c.goDeadline.Before(d)) {
		d = c.goDeadline
	}
	if !d.Equal(c.applied) {
		c.TCPConn.SetReadDeadline(d)
		c.applied = d
	}
	c.dlMu.Unlock()
	n, err := c.TCPConn.Read(b)
	if err == io.EOF {
		c.peerGone.Store(true)
	}
	return n, err
}

// SetReadDeadline: net/http's, which it uses to abort its background read.
func (c *conn) SetReadDeadline(t time.Time) error {
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	c.goDeadline = t
	if t.IsZero() {
		return nil // the policy's deadline applies again at the next read
	}
	c.applied = t
	return c.TCPConn.SetReadDeadline(t)
}

func (c *conn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.TCPConn.SetWriteDeadline(t)
}

// Write: the response bytes; net/http's own plain-text refusals (of a head the policy
// accepted but net/http did not: none known) replaced by the contract's. net/http writes one
// only after reading a head for which no handler began.
func (c *conn) Write(p []byte) (int, error) {
	if len(p) > 12 && p[0] == 'H' && c.consumed.Load() > c.started && isGoRefusal(p) {
		return c.srv.replaceGoRefusal(c, p)
	}
	return c.TCPConn.Write(p)
}

const goRefusalHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

func isGoRefusal(p []byte) bool {
	if !bytes.HasPrefix(p, []byte("HTTP/1.1 ")) {
		return false
	}
	i := bytes.IndexByte(p, '\r')
	return i > 0 && bytes.HasPrefix(p[i:], []byte(goRefusalHeaders))
}

// goRefusal: the status and text of one of net/http's plain-text refusals.
func goRefusal(p []byte) *rejection {
	status, _ := strconv.Atoi(string(p[9:12]))
	if status < 400 || status > 599 {
		status = 400
	}
	// The body: "400 Bad Request", "400 Bad Request: why", or a text alone.
	text := string(p[bytes.Index(p, []byte(goRefusalHeaders))+len(goRefusalHeaders):])
	if len(text) > 4 && isDigit(text[0]) && isDigit(text[1]) && isDigit(text[2]) && text[3] == ' ' {
		text = text[4:]
	}
	if _, why, found := strings.Cut(text, ": "); found {
		text = why
	}
	return &rejection{status, "net/http: " + text}
}

// CloseWrite: net/http's half-close (its closeWriteAndWait looks for this method).
func (c *conn) CloseWrite() error {
	return c.TCPConn.CloseWrite()
}

// Close closes without a reset (see the top of the file); it returns at once.
func (c *conn) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	c.srv.untrack(c)
	c.dlMu.Lock()
	c.TCPConn.SetReadDeadline(aLongTimeAgo) // a read in progress returns
	c.dlMu.Unlock()
	c.TCPConn.CloseWrite()
	if c.peerGone.Load() {
		c.readMu.Lock()
		c.releaseBuf()
		c.readMu.Unlock()
		return c.TCPConn.Close()
	}
	go c.linger()
	return nil
}

func (c *conn) linger() {
	c.readMu.Lock() // once the read in progress, if any, has returned
	defer c.readMu.Unlock()
	c.releaseBuf()
	closeWithoutReset(c.TCPConn)
}

// closeWithoutReset: half-close, read and drop what the client still sends, for at most
// lingerTime, then close.
func closeWithoutReset(c *net.TCPConn) {
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(lingerTime))
	var drop [512]byte
	for {
		if _, err := c.Read(drop[:]); err != nil {
			break
		}
	}
	c.Close()
}

// idle: waiting for a next request that has not begun, none in flight (a drain closes it).
func (c *conn) idle() bool {
	return c.idleWaiting.Load() && c.released.Load() == c.finished.Load()
}

// listener: accepts, sheds connections past the cap, and wraps the rest.
type listener struct {
	net.Listener
	srv *server
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		tcp := nc.(*net.TCPConn) // Go sets TCP_NODELAY on every TCP connection
		l.srv.tel.connectionAccepted()
		if l.srv.openConnections() >= l.srv.opts.maxConnections {
			l.srv.tel.connectionRejected()
			go shed(tcp, l.srv.overloaded)
			continue
		}
		c := newConn(tcp, l.srv)
		l.srv.track(c)
		return c, nil
	}
}

// shed: the canned 503 (lifecycle.overloaded_response), then a close without a reset.
func shed(c *net.TCPConn, answer []byte) {
	c.Write(answer)
	closeWithoutReset(c)
}
