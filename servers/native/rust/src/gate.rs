//! The head gate: a filter on each connection's byte stream, between the socket and hyper.
//!
//! hyper 0.14's parser is both stricter and laxer than the framing policy (it takes a bare LF
//! for a line end, it refuses targets the policy accepts), and it answers its own errors as a
//! bare `400 Bad Request` with no body, no `X-Stackbench-Impl` and no hook to change that. So
//! hyper never parses a client's head: the gate reads each head itself (policy::scan, the
//! policy's strict parser), and hands hyper a canonical head of its own making (the method,
//! target `/`, only the framing, Expect and Connection fields), then exactly the body the
//! accepted framing announces (Content-Length bytes, or the chunked body re-framed as it is
//! validated). What hyper does not see travels beside it, in `ConnShared::metas`: one `Meta`
//! per request, in order (the real target, content type, whether to close), which the service
//! takes in `call` (hyper calls it for one request at a time, in order).
//!
//! A refused head becomes a synthetic request (`GET / HTTP/1.1` + `Connection: close`, HEAD
//! for a HEAD) whose Meta carries the refusal: hyper answers it in order, after any pipelined
//! request before it, with the contract's JSON (server.rs), then closes. The gate passes
//! nothing after a refused head, ever: the bytes behind it are never read as a request.
//!
//! The gate also enforces the timeouts (servers/protocol/policy.py): idle (no request begun),
//! header (a head begun but not complete) and body (min(header timeout, 60 s) from the body's
//! start), by failing the read; and the clean close: `poll_shutdown` half-closes, then reads
//! and drops what the client still sends for at most 0.5 s, so that it reads our last answer
//! instead of a reset.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::mem::MaybeUninit;
use std::io;
use std::os::unix::io::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::policy::{self, ChunkStep, Chunked, Framing, Head, Rejection, Scan};

pub const LINGER: Duration = Duration::from_millis(500);
const BODY_TIMEOUT_CAP: Duration = Duration::from_secs(60);
// What one read asks the socket for (hyper's own first read buffer is as large). The buffer
// is given back once everything in it has been passed on: a connection waiting on a request
// (or idle) holds none, as a Python server holds no read buffer between reads.
const READ_CHUNK: usize = 8 * 1024;
// framing.AcceptedHeads' bounds: larger heads are checked every time; past the capacity the
// set starts again.
const MAX_REMEMBERED_HEAD_BYTES: usize = 2048;
const REMEMBERED_HEADS: usize = 1024;

/// What the service needs to know of a request that hyper did not see.
#[derive(Debug)]
pub struct Meta {
    pub method: Arc<str>,
    pub target: Arc<str>,
    pub close: bool,
    pub expect_continue: bool,
    pub content_type: Option<Arc<[u8]>>,
    pub refusal: Option<Rejection>,
    pub head_method: bool,
}

/// A head the policy accepted, as the gate hands it on: the canonical head for hyper, the
/// framing to follow, and the Meta of every request that sends these bytes.
struct Accepted {
    raw: Box<[u8]>,
    canonical: Box<[u8]>,
    framing: Framing,
    method: Arc<str>,
    target: Arc<str>,
    close: bool,
    expect_continue: bool,
    content_type: Option<Arc<[u8]>>,
}

impl Accepted {
    fn new(raw: &[u8], head: Head) -> Accepted {
        let mut out = Vec::with_capacity(head.method.len() + 64);
        out.extend_from_slice(head.method.as_bytes());
        // An HTTP/1.0 request stays one, so that hyper answers in HTTP/1.0 (a streamed body
        // then ends with the connection, not in chunks).
        out.extend_from_slice(if head.http10 { b" / HTTP/1.0\r\n" } else { b" / HTTP/1.1\r\n" });
        match head.framing {
            Framing::Length(0) => (),
            Framing::Length(n) => out.extend_from_slice(format!("Content-Length: {}\r\n", n).as_bytes()),
            Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        }
        if head.expect_continue {
            out.extend_from_slice(b"Expect: 100-continue\r\n");
        }
        if head.close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        Accepted {
            raw: raw.into(),
            canonical: out.into(),
            framing: head.framing,
            method: head.method.into(),
            target: head.target.into(),
            close: head.close,
            expect_continue: head.expect_continue,
            content_type: head.content_type.map(Into::into),
        }
    }

    fn meta(&self) -> Meta {
        Meta {
            head_method: &*self.method == "HEAD",
            method: self.method.clone(),
            target: self.target.clone(),
            close: self.close,
            expect_continue: self.expect_continue,
            content_type: self.content_type.clone(),
            refusal: None,
        }
    }
}

thread_local! {
    /// Heads the policy has accepted, by their bytes (framing.AcceptedHeads, as the h11
    /// servers keep them): load generators send the same head every time, and a head seen
    /// before is not parsed and checked again. One set per runtime thread, so no lock.
    static ACCEPTED: RefCell<HashMap<Box<[u8]>, Arc<Accepted>>> = RefCell::new(HashMap::new());
}

/// Per connection, shared by the gate and the service.
#[derive(Debug, Default)]
pub struct ConnShared {
    pub metas: Mutex<VecDeque<Meta>>,
    /// The client closed its side (end of file).
    pub peer_eof: AtomicBool,
    /// The body did not arrive within the body timeout.
    pub body_timed_out: AtomicBool,
    /// Requests handed to the service whose response is not finished.
    pub in_flight: AtomicUsize,
    /// The gate's reader while it waits with a request in flight (no timeout runs then): the
    /// last request's end wakes it, so that the idle timeout starts (hyper does not read
    /// again by itself: its read is already parked on the socket).
    pub reader: Mutex<Option<Waker>>,
    /// The client's address, for the log, and the socket, for the watch on long plans.
    pub peer: String,
    pub fd: RawFd,
}

impl ConnShared {
    pub fn new(peer: String, fd: RawFd) -> ConnShared {
        ConnShared { peer, fd, ..ConnShared::default() }
    }

    /// A request's response is finished: if it was the last in flight, the idle wait begins.
    pub fn request_done(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(waker) = self.reader.lock().unwrap().take() {
                waker.wake();
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub idle: Duration,
    pub header: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    Idle,
    Head,
    Body,
}

enum Reading {
    Head,
    Body(u64),
    Chunked(Chunked),
    /// After a refusal or a broken body: nothing more is passed on.
    Stopped,
}

enum Step {
    Progress,
    NeedMore,
    Stopped,
    Broken,
}

enum Shutdown {
    Open,
    Lingering(Pin<Box<Sleep>>),
    Done,
}

pub struct Gate {
    io: TcpStream,
    shared: Arc<ConnShared>,
    timeouts: Timeouts,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    reading: Reading,
    eof: bool,
    /// The wait being timed, and its deadline.
    timer: Option<(Waiting, Instant)>,
    /// Armed at the deadline of this wait or an earlier one: it is not made again for every
    /// wait (a keep-alive connection has an idle wait after each request), only moved when
    /// it fires early or a wait ends sooner (poll_timer).
    sleep: Option<Pin<Box<Sleep>>>,
    shutdown: Shutdown,
    /// The last head this connection sent that the policy accepted: a client sends the same
    /// one again, found without a lookup.
    last: Option<Arc<Accepted>>,
}

impl Gate {
    pub fn new(io: TcpStream, shared: Arc<ConnShared>, timeouts: Timeouts) -> Gate {
        Gate {
            io,
            shared,
            timeouts,
            inbuf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            reading: Reading::Head,
            eof: false,
            timer: None,
            sleep: None,
            shutdown: Shutdown::Open,
            last: None,
        }
    }

    /// The head at the front of `inbuf`, if it is one the policy has accepted before: the
    /// same bytes up to its blank line get the same verdict (scan reads no further).
    fn remembered(&self) -> Option<Arc<Accepted>> {
        if let Some(last) = &self.last {
            if self.inbuf.starts_with(&last.raw) {
                return Some(last.clone());
            }
        }
        let window = &self.inbuf[..self.inbuf.len().min(MAX_REMEMBERED_HEAD_BYTES)];
        let end = window.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        ACCEPTED.with(|heads| heads.borrow().get(&window[..end]).cloned())
    }

    fn remember(accepted: &Arc<Accepted>) {
        if accepted.raw.len() > MAX_REMEMBERED_HEAD_BYTES {
            return;
        }
        ACCEPTED.with(|heads| {
            let mut heads = heads.borrow_mut();
            if heads.len() >= REMEMBERED_HEADS {
                heads.clear();
            }
            heads.insert(accepted.raw.clone(), accepted.clone());
        });
    }

    fn consume(&mut self, n: usize) {
        if n == self.inbuf.len() {
            self.inbuf = Vec::new();
        } else {
            self.inbuf.drain(..n);
        }
    }

    fn push_meta(&self, meta: Meta) {
        self.shared.metas.lock().unwrap().push_back(meta);
    }

    /// Move what the input allows from `inbuf` to `out` (for hyper).
    fn process(&mut self) -> Step {
        match &mut self.reading {
            Reading::Stopped => Step::Stopped,
            Reading::Head => {
                let empty = policy::empty_lines(&self.inbuf); // RFC 9112 section 2.2: ignored
                if empty > 0 {
                    self.consume(empty);
                }
                if self.inbuf.is_empty() {
                    return Step::NeedMore;
                }
                let accepted = match self.remembered() {
                    Some(accepted) => accepted,
                    None => match policy::scan(&self.inbuf) {
                        Scan::NeedMore => return Step::NeedMore,
                        Scan::Accept { len, head } => {
                            let accepted = Arc::new(Accepted::new(&self.inbuf[..len], head));
                            Gate::remember(&accepted);
                            accepted
                        }
                        Scan::Reject { rejection, head_method } => {
                            let method = if head_method { "HEAD" } else { "GET" };
                            self.out.extend_from_slice(
                                format!("{} / HTTP/1.1\r\nConnection: close\r\n\r\n", method).as_bytes(),
                            );
                            self.push_meta(Meta {
                                method: method.into(),
                                target: "/".into(),
                                close: true,
                                refusal: Some(rejection),
                                head_method,
                                expect_continue: false,
                                content_type: None,
                            });
                            self.inbuf = Vec::new();
                            self.reading = Reading::Stopped;
                            self.timer = None;
                            return Step::Progress;
                        }
                    },
                };
                self.out.extend_from_slice(&accepted.canonical);
                self.reading = match accepted.framing {
                    Framing::Length(0) => Reading::Head,
                    Framing::Length(n) => Reading::Body(n),
                    Framing::Chunked => Reading::Chunked(Chunked::default()),
                };
                self.push_meta(accepted.meta());
                self.consume(accepted.raw.len());
                self.timer = None;
                self.last = Some(accepted);
                Step::Progress
            }
            Reading::Body(left) => {
                if self.inbuf.is_empty() {
                    return Step::NeedMore;
                }
                let take = (self.inbuf.len() as u64).min(*left) as usize;
                *left -= take as u64;
                if *left == 0 {
                    self.reading = Reading::Head;
                    self.timer = None;
                }
                self.out.extend_from_slice(&self.inbuf[..take]);
                self.consume(take);
                Step::Progress
            }
            Reading::Chunked(parser) => match parser.step(&self.inbuf, &mut self.out) {
                ChunkStep::Consumed(n) => {
                    self.consume(n);
                    Step::Progress
                }
                ChunkStep::Done(n) => {
                    self.consume(n);
                    self.reading = Reading::Head;
                    self.timer = None;
                    Step::Progress
                }
                ChunkStep::NeedMore => Step::NeedMore,
                ChunkStep::Broken => {
                    self.reading = Reading::Stopped;
                    Step::Broken
                }
            },
        }
    }

    /// The wait the connection is in, for the timeouts (None: a request is being handled).
    fn waiting(&self) -> Option<Waiting> {
        match self.reading {
            Reading::Head if self.shared.in_flight.load(Ordering::Acquire) > 0 => None,
            Reading::Head if self.inbuf.is_empty() => Some(Waiting::Idle),
            Reading::Head => Some(Waiting::Head),
            Reading::Body(_) | Reading::Chunked(_) => Some(Waiting::Body),
            Reading::Stopped => None,
        }
    }

    /// Err once the current wait has outlasted its limit.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let (wanted, deadline) = match (&self.timer, self.waiting()) {
            (Some((current, deadline)), Some(wanted)) if *current == wanted => (wanted, *deadline),
            (_, None) => {
                self.timer = None;
                self.sleep = None; // a request in flight holds no timer
                return None;
            }
            (_, Some(wanted)) => {
                let limit = match wanted {
                    Waiting::Idle => self.timeouts.idle,
                    Waiting::Head => self.timeouts.header,
                    Waiting::Body => self.timeouts.header.min(BODY_TIMEOUT_CAP),
                };
                let deadline = Instant::now() + limit;
                self.timer = Some((wanted, deadline));
                (wanted, deadline)
            }
        };
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
        }
        while sleep.as_mut().poll(cx).is_ready() {
            if sleep.deadline() < deadline {
                sleep.as_mut().reset(deadline); // an earlier wait's deadline
                continue;
            }
            if wanted == Waiting::Body {
                self.shared.body_timed_out.store(true, Ordering::Release);
                self.reading = Reading::Stopped;
            }
            self.timer = None;
            self.sleep = None;
            return Some(io::Error::new(io::ErrorKind::TimedOut, "timed out waiting for the client"));
        }
        None
    }

    /// Read what the socket has into `inbuf`: Ready(Ok(n)), 0 at end of file. The read goes
    /// through a buffer on the stack, so that a connection parked in a read (the usual state of
    /// one whose request is being handled) holds no buffer of its own.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut scratch = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut scratch);
        match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                self.inbuf.extend_from_slice(buf.filled());
                Poll::Ready(Ok(buf.filled().len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

use std::future::Future;

impl AsyncRead for Gate {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            match this.process() {
                Step::Progress => continue,
                // Never woken by the read side again: hyper answers what it has, then closes.
                Step::Stopped => return Poll::Pending,
                Step::Broken => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "broken chunked body")))
                }
                Step::NeedMore => (),
            }
            if this.eof {
                this.shared.peer_eof.store(true, Ordering::Release);
                return Poll::Ready(Ok(())); // end of file, for hyper too
            }
            match this.poll_fill(cx) {
                Poll::Ready(Ok(0)) => this.eof = true,
                Poll::Ready(Ok(_)) => (),
                Poll::Ready(Err(e)) => {
                    this.shared.peer_eof.store(true, Ordering::Release);
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    if let Some(timed_out) = this.poll_timer(cx) {
                        return Poll::Ready(Err(timed_out));
                    }
                    if this.timer.is_none() {
                        // No wait is timed (a request is in flight): be woken at its end.
                        *this.shared.reader.lock().unwrap() = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl AsyncWrite for Gate {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    /// Half-close, then drop what the client still sends until it closes, for at most LINGER.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.shutdown {
                Shutdown::Open => {
                    match Pin::new(&mut this.io).poll_shutdown(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(_)) => this.shutdown = Shutdown::Done,
                        Poll::Ready(Ok(())) => {
                            this.shutdown = Shutdown::Lingering(Box::pin(tokio::time::sleep(LINGER)))
                        }
                    }
                    this.inbuf = Vec::new();
                    this.reading = Reading::Stopped;
                }
                Shutdown::Lingering(deadline) => {
                    if this.eof || deadline.as_mut().poll(cx).is_ready() {
                        this.shutdown = Shutdown::Done;
                        continue;
                    }
                    this.inbuf.clear();
                    match this.poll_fill(cx) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => this.shutdown = Shutdown::Done,
                        Poll::Ready(Ok(_)) => (),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Shutdown::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}
