//! Serving: one tokio task per connection, hyper's HTTP/1.1 server behind the head gate, and
//! each plan carried out the tokio way (timers, a JoinSet, spawn_blocking).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Bytes, HttpBody};
use hyper::header::{HeaderName, HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, SERVER};
use hyper::service::service_fn;
use hyper::{Body, Request};
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Sleep;

use crate::contract::{self, Kind, Plan, Response};
use crate::gate::{ConnShared, Gate, Meta, Timeouts, LINGER};
use crate::metrics::{Live, Telemetry, CLIENT_CLOSED_STATUS};
use crate::upstream::Upstream;

pub struct App {
    pub impl_name: String,
    /// X-Stackbench-Impl's value, made once (impl_header).
    pub impl_header: HeaderValue,
    pub telemetry: Telemetry,
    pub live: Arc<Live>,
    pub upstream: Option<Upstream>,
    pub timeouts: Timeouts,
    pub max_connections: i64,
}

/// Counts a task the server spawned (stackbench_tasks) for as long as it lives: tokio 1.24 has
/// no stable count of live tasks, so the server counts its own (as the gevent server does).
pub struct TaskGuard(Arc<Live>);

impl TaskGuard {
    pub fn new(live: &Arc<Live>) -> TaskGuard {
        live.tasks.fetch_add(1, Ordering::Relaxed);
        TaskGuard(live.clone())
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.tasks.fetch_sub(1, Ordering::Relaxed);
    }
}

struct ConnectionGuard(Arc<Live>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request from start to its response's last byte: records it when dropped, as a 499
/// (client closed) unless a status was set. hyper drops the service future, or the response
/// body, when the client goes away; this is how that is recorded.
pub struct RequestGuard {
    app: Arc<App>,
    shared: Arc<ConnShared>,
    route: &'static str,
    method: &'static str, // its label (contract::method_label)
    started: Instant,
    status: u16,
}

impl RequestGuard {
    fn new(app: &Arc<App>, shared: &Arc<ConnShared>, route: &'static str, method: &str) -> RequestGuard {
        RequestGuard::started_at(app, shared, route, method, app.telemetry.request_started())
    }

    fn started_at(
        app: &Arc<App>,
        shared: &Arc<ConnShared>,
        route: &'static str,
        method: &str,
        started: Instant,
    ) -> RequestGuard {
        RequestGuard {
            app: app.clone(),
            shared: shared.clone(),
            route,
            method: contract::method_label(method),
            started,
            status: CLIENT_CLOSED_STATUS,
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.app.telemetry.request_finished(self.route, self.method, self.status, self.started);
        self.shared.request_done();
    }
}

/// A response body: the whole of it, or /stream's chunks `ms` apart. It owns the request's
/// guard, so that the request is recorded once its last byte is handed to hyper (or as 499
/// when hyper drops it unfinished).
pub struct RespBody {
    inner: Inner,
    guard: Option<RequestGuard>,
}

enum Inner {
    Full(Option<Bytes>),
    Stream { next: u64, chunks: u64, ms: u64, pause: Option<Pin<Box<Sleep>>> },
}

impl RespBody {
    fn full(body: Bytes, guard: Option<RequestGuard>) -> RespBody {
        let bytes = if body.is_empty() { None } else { Some(body) };
        RespBody { inner: Inner::Full(bytes), guard }
    }
}

impl HttpBody for RespBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_data(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Infallible>>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Full(bytes) => {
                let data = bytes.take();
                if data.is_none() {
                    this.guard = None;
                }
                Poll::Ready(data.map(Ok))
            }
            Inner::Stream { next, chunks, ms, pause } => {
                if *next == *chunks {
                    if let Some(guard) = this.guard.as_mut() {
                        guard.status = 200;
                    }
                    this.guard = None;
                    return Poll::Ready(None);
                }
                if *next > 0 {
                    let sleep = pause.get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(*ms))));
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    *pause = None;
                }
                let chunk = contract::stream_chunk(*next);
                *next += 1;
                Poll::Ready(Some(Ok(Bytes::from(chunk))))
            }
        }
    }

    fn poll_trailers(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Result<Option<hyper::HeaderMap>, Infallible>> {
        Poll::Ready(Ok(None))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.inner, Inner::Full(None))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match &self.inner {
            Inner::Full(Some(bytes)) => hyper::body::SizeHint::with_exact(bytes.len() as u64),
            Inner::Full(None) => hyper::body::SizeHint::with_exact(0),
            Inner::Stream { .. } => hyper::body::SizeHint::default(),
        }
    }
}

use std::future::Future;

type HttpResponse = hyper::Response<RespBody>;

const X_STACKBENCH_IMPL: HeaderName = HeaderName::from_static("x-stackbench-impl");
// Checked once, at compile time (from_static at run time checks every byte each call).
const TEXT_VALUE: HeaderValue = HeaderValue::from_static(contract::TEXT);
const JSON_VALUE: HeaderValue = HeaderValue::from_static(contract::JSON);
const STACKBENCH: HeaderValue = HeaderValue::from_static("stackbench");
const CLOSE: HeaderValue = HeaderValue::from_static("close");

/// X-Stackbench-Impl's value: kept in static bytes, so that each response's copy of it is free.
pub fn impl_header(impl_name: &str) -> HeaderValue {
    let name: &'static str = Box::leak(impl_name.to_string().into_boxed_str());
    HeaderValue::from_maybe_shared(Bytes::from_static(name.as_bytes()))
        .unwrap_or_else(|_| crate::fail(&format!("--impl {:?} is not a header value", impl_name)))
}

fn head_of(app: &App, status: u16, content_type: &'static str, close: bool) -> hyper::http::response::Builder {
    let mut builder = hyper::Response::builder().status(status);
    // Values of static bytes (the contract's content types are constants): no copies.
    if let Some(headers) = builder.headers_mut() {
        let content_type = match content_type {
            contract::TEXT => TEXT_VALUE,
            contract::JSON => JSON_VALUE,
            other => HeaderValue::from_static(other),
        };
        headers.insert(CONTENT_TYPE, content_type);
        headers.insert(SERVER, STACKBENCH);
        headers.insert(X_STACKBENCH_IMPL, app.impl_header.clone());
        if close {
            headers.insert(CONNECTION, CLOSE);
        }
    }
    builder
}

/// A complete response, as lifecycle.response_headers builds its head.
fn complete(app: &App, response: Response, head: bool, close: bool, guard: Option<RequestGuard>) -> HttpResponse {
    let mut guard = guard;
    if let Some(guard) = guard.as_mut() {
        guard.status = response.status;
    }
    let mut builder = head_of(app, response.status, response.content_type, close || response.close_connection);
    if head || response.allow.is_some() {
        builder = builder.header(CONTENT_LENGTH, response.body.len());
    } // else hyper writes the body's exact length (its size_hint) in the same place
    if let Some(allow) = response.allow {
        builder = builder.header(ALLOW, allow);
    }
    let body = if head { Bytes::new() } else { response.body };
    builder.body(RespBody::full(body, guard)).unwrap()
}

/// The echo's content type: the received bytes unchanged (obs-text included), or
/// application/octet-stream when the field is absent or empty.
fn echo_type(content_type: &Option<std::sync::Arc<[u8]>>) -> Option<HeaderValue> {
    match content_type {
        Some(value) if !value.is_empty() => HeaderValue::from_bytes(value).ok(),
        _ => None,
    }
}

/// The client left mid-request: the service fails, so hyper closes the connection and
/// writes nothing (499 is only the metric's label, as on every server); the request's guard,
/// dropped with it, records the 499.
#[derive(Debug)]
pub struct ClientGone;

impl std::fmt::Display for ClientGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("client closed request")
    }
}

impl std::error::Error for ClientGone {}

/// Resolves once the client has closed its side of the connection (end of file, or a reset),
/// as the trio server's watch does during a plan that waits: the wait is then cancelled and
/// the request recorded as 499. A client that sends more (a pipelined request) is still there:
/// then it never resolves. It watches a duplicate of the socket's descriptor, peeking, so
/// that nothing hyper (through the gate) would read is taken; hyper itself does not read
/// mid-request (the connection allows half-closes, see `connection`).
async fn client_leaves(fd: RawFd) {
    // SAFETY: fcntl on a descriptor this connection owns (open while its request runs).
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return std::future::pending().await;
    }
    // SAFETY: dup is a fresh descriptor that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(dup) };
    let watched = match AsyncFd::with_interest(owned, Interest::READABLE) {
        Ok(watched) => watched,
        Err(_) => return std::future::pending().await,
    };
    loop {
        let mut ready = match watched.readable().await {
            Ok(ready) => ready,
            Err(_) => return std::future::pending().await,
        };
        let mut byte = 0u8;
        // SAFETY: a one-byte buffer that lives across the call.
        let n = unsafe {
            libc::recv(dup, &mut byte as *mut u8 as *mut libc::c_void, 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
        };
        if n == 0 {
            return;
        }
        if n > 0 {
            return std::future::pending().await;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
            return; // reset: gone too
        }
        ready.clear_ready();
    }
}

enum BodyEnd {
    Done(Vec<u8>),
    TooLarge,
    Failed,
}

async fn read_body(body: &mut Body, keep: bool) -> BodyEnd {
    let mut data = Vec::new();
    let mut size = 0usize;
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(chunk) => {
                size += chunk.len();
                if size > contract::MAX_BODY_BYTES {
                    return BodyEnd::TooLarge;
                }
                if keep {
                    data.extend_from_slice(&chunk);
                }
            }
            Err(_) => return BodyEnd::Failed,
        }
    }
    BodyEnd::Done(data)
}

/// Serve one request hyper parsed from the gate's canonical head, with its Meta.
async fn respond(
    app: Arc<App>,
    shared: Arc<ConnShared>,
    meta: Option<Meta>,
    request: Request<Body>,
) -> Result<HttpResponse, ClientGone> {
    let meta = match meta {
        Some(meta) => meta,
        None => {
            // The gate hands hyper nothing without its Meta: a bug, answered, not a panic.
            shared.in_flight.fetch_add(1, Ordering::AcqRel);
            let guard = RequestGuard::new(&app, &shared, contract::OTHER_ROUTE, "other");
            return Ok(complete(&app, contract::error(500, "internal error"), false, true, Some(guard)));
        }
    };
    if let Some(rejection) = &meta.refusal {
        // As lifecycle.log_refusal words it.
        eprintln!(
            "stackbench {}: refused {} from {}: {}",
            app.impl_name, rejection.status, shared.peer, rejection.message
        );
        let guard = RequestGuard::new(&app, &shared, contract::OTHER_ROUTE, "other");
        let response = contract::error(rejection.status, &rejection.message).closing();
        return Ok(complete(&app, response, meta.head_method, true, Some(guard)));
    }
    let started = app.telemetry.request_started(); // before the plan: planning /cpu is its work
    let (route, plan) = contract::plan(&meta.method, &meta.target);
    let mut guard = RequestGuard::started_at(&app, &shared, route, &meta.method, started);
    let head = meta.head_method;
    let close = meta.close;
    let mut body = request.into_body();
    let client_gone = |guard: RequestGuard| {
        drop(guard); // recorded as 499
        ClientGone
    };
    let broken = |shared: &ConnShared| {
        if shared.peer_eof.load(Ordering::Acquire) {
            None
        } else if shared.body_timed_out.load(Ordering::Acquire) {
            Some(contract::timed_out())
        } else {
            Some(contract::incomplete())
        }
    };
    if let Plan::Echo = plan {
        let (response, echoed) = match read_body(&mut body, true).await {
            BodyEnd::Done(data) => (Response::new(200, data, "application/octet-stream"), echo_type(&meta.content_type)),
            BodyEnd::TooLarge => (contract::too_large(), None),
            BodyEnd::Failed => match broken(&shared) {
                Some(response) => (response, None),
                None => return Err(client_gone(guard)),
            },
        };
        let mut answer = complete(&app, response, head, close, Some(guard));
        if let Some(value) = echoed {
            answer.headers_mut().insert(CONTENT_TYPE, value);
        }
        return Ok(answer);
    }
    // A body nobody asked for is read and dropped, unless the client waits for a 100
    // Continue nothing will send (then the connection closes after the response).
    if !body.is_end_stream() && !meta.expect_continue {
        match read_body(&mut body, false).await {
            BodyEnd::Done(_) => (),
            BodyEnd::TooLarge => return Ok(complete(&app, contract::too_large(), head, close, Some(guard))),
            BodyEnd::Failed => match broken(&shared) {
                Some(response) => return Ok(complete(&app, response, head, close, Some(guard))),
                None => return Err(client_gone(guard)),
            },
        }
    }
    let response = match plan {
        Plan::Reply(response) => response,
        Plan::Metrics => app.telemetry.exposition(),
        Plan::Lag => app.telemetry.lag(),
        Plan::Sleep { ms } => {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => contract::sleep_response(ms),
                _ = client_leaves(shared.fd) => return Err(client_gone(guard)),
            }
        }
        Plan::Fanout { children, ms } => {
            tokio::select! {
                _ = fanout(&app.live, children, ms) => contract::fanout_response(children, ms),
                _ = client_leaves(shared.fd) => return Err(client_gone(guard)),
            }
        }
        Plan::Blocking { ms, offload, kind } => {
            if offload {
                // tokio's blocking pool (max_blocking_threads = OFFLOAD_THREADS)
                let _ = tokio::task::spawn_blocking(move || legacy_blocking_call(ms, kind)).await;
            } else {
                // Inline, on the runtime's thread: every task of this runtime waits with it.
                legacy_blocking_call(ms, kind);
            }
            contract::blocking_response(ms, offload, kind)
        }
        Plan::Upstream { calls, ms } => match &app.upstream {
            Some(upstream) => tokio::select! {
                answer = upstream.call_all(calls, ms, &app.live) => answer,
                _ = client_leaves(shared.fd) => return Err(client_gone(guard)),
            },
            None => contract::error(503, "no upstream configured: start the server with --upstream URL"),
        },
        Plan::Stream { chunks, ms } => {
            let builder = head_of(&app, 200, contract::TEXT, close);
            if head {
                guard.status = 200;
                return Ok(builder.body(RespBody::full(Bytes::new(), Some(guard))).unwrap());
            }
            let inner = Inner::Stream { next: 0, chunks, ms, pause: None };
            return Ok(builder.body(RespBody { inner, guard: Some(guard) }).unwrap());
        }
        Plan::Echo => unreachable!(),
    };
    Ok(complete(&app, response, head, close, Some(guard)))
}

/// K children that each wait `ms`, in a JoinSet: dropping it (the client left, so hyper
/// dropped this request's future) aborts every child still running.
async fn fanout(live: &Arc<Live>, children: u64, ms: u64) {
    let mut set = JoinSet::new();
    for _ in 0..children {
        let guard = TaskGuard::new(live);
        set.spawn(async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_millis(ms)).await;
        });
    }
    while let Some(joined) = set.join_next().await {
        if joined.is_err() {
            set.abort_all(); // a child failed: the others are cancelled
            break;
        }
    }
}

const C_SLICE_US: u64 = 100_000; // usleep may refuse a second or more: C waits in slices

/// contract.legacy_blocking_call: kind python is Rust's own blocking sleep, kind c libc's
/// usleep through the FFI. Either blocks the calling OS thread.
pub fn legacy_blocking_call(ms: u64, kind: Kind) {
    match kind {
        Kind::Python => std::thread::sleep(Duration::from_millis(ms)),
        Kind::C => {
            let mut left = ms * 1000;
            while left > 0 {
                let slice = left.min(C_SLICE_US);
                // SAFETY: usleep has no preconditions.
                unsafe { libc::usleep(slice as libc::c_uint) };
                left -= slice;
            }
        }
    }
}

/// Serve one accepted connection until it closes (or the drain closes it).
pub async fn connection(app: Arc<App>, stream: TcpStream, mut draining: watch::Receiver<bool>) {
    let _task = TaskGuard::new(&app.live);
    let _open = ConnectionGuard(app.live.clone());
    let peer = stream.peer_addr().map(|a| a.ip().to_string()).unwrap_or_else(|_| "?".to_string());
    let shared = Arc::new(ConnShared::new(peer, stream.as_raw_fd()));
    let gate = Gate::new(stream, shared.clone(), app.timeouts);
    let service = {
        let app = app.clone();
        let shared = shared.clone();
        service_fn(move |request: Request<Body>| {
            // Called for one request at a time, in order: its Meta is the first one queued.
            let meta = shared.metas.lock().unwrap().pop_front();
            if meta.is_some() {
                shared.in_flight.fetch_add(1, Ordering::AcqRel);
            }
            let app = app.clone();
            let shared = shared.clone();
            respond(app, shared, meta, request)
        })
    };
    let conn = hyper::server::conn::Http::new()
        .http1_only(true)
        .http1_keep_alive(true)
        // A client that half-closes (shutdown(SHUT_WR), `nc -N`, a request sent with its
        // end of file) still reads: its request is served, as on every server. Without this
        // hyper takes the end of file for the client gone and drops the request unanswered
        // and unrecorded. A client that leaves while a plan waits is caught by
        // client_leaves instead.
        .http1_half_close(true)
        .http1_title_case_headers(true)
        .serve_connection(gate, service);
    tokio::pin!(conn);
    let drain = async {
        while !*draining.borrow() {
            if draining.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = drain => (),
    }
    // Draining: hyper closes the connection if idle, else after the response in hand.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// A connection past the cap: the canned 503, a half-close, then what the client still sends
/// is read and dropped for at most LINGER (a close with unread input would be a reset).
pub async fn shed(app: Arc<App>, mut stream: TcpStream) {
    let _task = TaskGuard::new(&app.live);
    app.telemetry.connection_rejected();
    let _ = stream.write_all(&overloaded_response(&app.impl_name)).await;
    let _ = stream.shutdown().await;
    let _ = tokio::time::timeout(LINGER, async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

pub fn overloaded_response(impl_name: &str) -> Vec<u8> {
    let body = contract::error(503, "too many connections; try again later").body;
    let mut wire = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: {}\r\nContent-Length: {}\r\nX-Stackbench-Impl: {}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n",
        contract::JSON,
        body.len(),
        impl_name
    )
    .into_bytes();
    wire.extend_from_slice(&body);
    wire
}
