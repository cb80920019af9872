"""The gevent server: gevent.pywsgi, monkey-patched, one greenlet per connection.

The stackful model: handlers are plain blocking-looking functions. `time.sleep`, socket reads and
the "legacy" blocking library yield to the gevent hub implicitly because monkey patching swapped
them for cooperative versions, so nothing here is coloured async and nothing needs a thread.
Import this module only in a process of its own: it patches the whole interpreter.
"""

from gevent import monkey

monkey.patch_all()

# ruff: noqa: E402  (the imports below must see the patched socket, time and threading)
import signal
import socket
import time
from collections.abc import Iterator

import gevent
import gevent.event
import gevent.pool
from gevent import pywsgi

from servers import contract
from servers.contract import (
    Blocking,
    Database,
    Echo,
    Fanout,
    Lag,
    Metrics,
    Reply,
    Response,
    Sleep,
    Stream,
    Upstream,
)
from servers.lifecycle import (
    ServeOptions,
    announce,
    bind,
    log_refusal,
    overloaded_response,
    reason,
    response_headers,
    set_nodelay,
    stream_headers,
    wire_response,
)
from servers.protocol import framing, policy
from servers.protocol.framing import Rejection
from servers.runtime.gevent_calls import (
    answer_and_close,
    call_blocking,
    call_database,
    call_upstream,
    db_driver,
    monitor_lag,
    open_database,
    size_thread_pool,
)
from servers.telemetry import (
    CLIENT_CLOSED_STATUS,
    ServerInfo,
    Telemetry,
    make_telemetry,
)
from servers.upstream import sync_client
from servers.upstream.sync_client import SyncUpstream

IMPL = "gevent"


class ClientGone(Exception):
    """Thrown into a request's greenlet when its client closes the connection."""


class _ClientLeft(Exception):
    """End of file in the middle of a request head."""


class HeadTimeout(OSError):
    """Thrown into a connection idle, or sending its request head or body, for too long. An
    OSError, so pywsgi treats it as a broken connection and closes it."""


class Handler(pywsgi.WSGIHandler):
    """pywsgi's connection handler, plus: TCP_NODELAY; the connection cap; idle and header
    timeouts; the raw request target and socket for the app; and closing idle keep-alive
    connections when the server drains. (Class attributes: one server per process.)"""

    draining = False
    live: set["Handler"] = set()  # noqa: RUF012
    options = ServeOptions()
    telemetry: Telemetry
    connections: gevent.pool.Pool
    # What the connection waits for ("idle": a next request, "head": the rest of one), and
    # since when. Timestamps only: reap_slow_connections enforces the timeouts (a
    # gevent.Timeout per request cost a fifth of gevent's plaintext throughput).
    waiting_for: str | None = None
    waiting_since = 0.0
    head_request = False  # the request line read last is a HEAD's

    def handle(self) -> None:
        set_nodelay(self.socket)
        Handler.telemetry.connection_accepted()
        # The pool holds this connection's greenlet already: the others are one fewer.
        if policy.should_shed(len(Handler.connections) - 1, Handler.options):
            Handler.telemetry.connection_rejected()
            answer_and_close(self.socket, overloaded_response(IMPL), policy.SHED_LINGER_S)
            return  # the server closes the socket when this returns
        self.greenlet = gevent.getcurrent()
        Handler.live.add(self)
        try:
            super().handle()
        finally:
            Handler.live.discard(self)

    def read_requestline(self) -> str:
        if Handler.draining:
            return ""  # pywsgi closes the connection on an empty request line
        self.waiting_for, self.waiting_since = "idle", time.monotonic()
        try:
            if not self.rfile.peek(1):
                return ""  # the client closed
        except OSError:
            return ""  # reset, or timed out by the reaper
        # The first byte is in: the whole head must follow within the header timeout.
        self.waiting_for, self.waiting_since = "head", time.monotonic()
        line = self.rfile.readline(framing.MAX_REQUEST_LINE_BYTES + 1)
        # RFC 9112 section 2.2: empty lines before a request line are ignored (within the
        # header timeout, which runs from their first byte).
        while line == b"\r\n":
            line = self.rfile.readline(framing.MAX_REQUEST_LINE_BYTES + 1)
        self.head_request = line.startswith(b"HEAD ")  # a refusal then has no body either
        if len(line) > framing.MAX_REQUEST_LINE_BYTES:
            raise framing.LINE_TOO_LONG  # (answered in handle_one_request)
        if line.endswith(b"\n") and not line.endswith(b"\r\n"):
            raise framing.BARE_LF
        # Without its CRLF (pywsgi's own, shorter, limit must not count it); any other CR
        # stays, for the strict parser to refuse.
        return line.removesuffix(b"\r\n").decode("latin-1")

    def read_request(self, raw_requestline: str) -> bool:
        """The head, read and parsed by the framing policy's strict parser instead of
        pywsgi's (the email package's, which accepts ambiguous framing: see framing.py)."""
        try:
            head = framing.parse_head(self._read_raw_head(raw_requestline.encode("latin-1")))
        finally:
            self.waiting_for = None
        self.requestline = raw_requestline.rstrip()
        self.command, self.path = head.method, head.target
        self.request_version = f"HTTP/{head.version}"
        headers = pywsgi.OldMessage()
        # Filled directly (email.message.Message keeps its fields in `_headers`, which pywsgi
        # itself reads): parsing the validated lines a second time through the email package
        # would cost more than the validation.
        headers._headers = [
            (name.decode("latin-1"), _normalized(name, value).decode("latin-1"))
            for name, value in head.headers
        ]
        self.headers = headers
        self.content_length = head.content_length
        # Every Connection field, as comma-separated tokens (pywsgi compares the first field
        # with one string, so `keep-alive, close` kept the connection open).
        options = {
            token.strip().lower()
            for name, value in head.headers
            if name == b"connection"
            for token in value.split(b",")
        }
        if head.version == "1.1":
            self.close_connection = b"close" in options
        else:
            self.close_connection = b"keep-alive" not in options
        return True

    def _connection_upgrade_requested(self) -> bool:
        # The contract upgrades nothing; pywsgi would hand the app the raw socket file as its
        # input, Content-Length ignored, and a body would run into the next request.
        return False

    def _read_raw_head(self, request_line: bytes) -> bytes:
        """The request line (given, without its CRLF) and the header lines up to the blank
        line (consumed, not kept), joined by CRLF."""
        lines = [request_line]
        size = len(request_line) + 2
        while True:
            line = self.rfile.readline(framing.MAX_HEAD_BYTES - size + 1)
            size += len(line)
            if size > framing.MAX_HEAD_BYTES:
                raise framing.Rejection(
                    431, f"request head larger than {framing.MAX_HEAD_BYTES} bytes"
                )
            if not line.endswith(b"\n"):
                raise _ClientLeft  # end of file inside the head
            if not line.endswith(b"\r\n"):
                raise framing.BARE_LF
            line = line[:-2]
            if not line:
                return b"\r\n".join(lines)
            lines.append(line)

    def _handle_client_error(self, ex: Exception):
        if isinstance(ex, Rejection | _ClientLeft):
            raise ex  # out of handle_one_request, to be answered there
        if isinstance(ex, OSError):  # the header timeout (HeadTimeout), a reset: just close
            raise _ClientLeft from ex
        return super()._handle_client_error(ex)

    def handle_one_request(self):
        try:
            return super().handle_one_request()
        except Rejection as rejection:
            self._refuse(rejection)
            return None  # the connection closes
        except _ClientLeft:
            return None
        finally:
            self.waiting_for = None  # paths that never reach read_request (errors)

    def _refuse(self, rejection: Rejection) -> None:
        """Answer a request the framing policy refuses, count it, log it in one line, and
        close without a reset."""
        started = Handler.telemetry.request_started()
        log_refusal(IMPL, rejection, self.client_address[0])
        wire = wire_response(IMPL, rejection.response(), self.head_request)
        sent = answer_and_close(self.socket, wire, policy.REFUSED_BODY_LINGER_S)
        status = rejection.status if sent else CLIENT_CLOSED_STATUS
        Handler.telemetry.request_finished(contract.OTHER_ROUTE, "other", status, started)

    def process_result(self) -> None:
        if self.command != "HEAD":
            return super().process_result()
        # pywsgi would end a HEAD response to a streamed route with the chunked terminator,
        # a body the next response on the connection would be read from.
        for _ in self.result:
            pass
        if self.status and not self.headers_sent:
            self.write(b"")  # the head alone
        return None

    def get_environ(self) -> dict:
        environ = super().get_environ()
        if self.wsgi_input.chunked_input:
            self.wsgi_input = environ["wsgi.input"] = _CheckedChunkedInput(
                self.rfile, None, self.wsgi_input.socket, chunked_input=True
            )
        environ["stackbench.target"] = self.path  # undecoded, query string included
        environ["stackbench.socket"] = self.socket
        environ["stackbench.handler"] = self
        return environ


class _CheckedChunkedInput(pywsgi.Input):
    """pywsgi's input for a chunked body, its lines read by the framing policy (pywsgi's own
    reader took `2;` and trailers without a colon): a line the policy refuses is an OSError,
    as pywsgi's are."""

    __slots__ = ("chunks",)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.chunks = framing.ChunkedBody()

    def _chunked_read(self, length: int | None = None, use_readline: bool = False) -> bytes:
        self._send_100_continue()
        chunks = self.chunks
        read: list[bytes] = []
        wanted = -1 if length is None else length
        while wanted and not chunks.done:
            left = chunks.data_left
            if left:
                data = self.rfile.read(left if wanted < 0 else min(left, wanted))
                if not data:
                    self._fail("unexpected end of file in chunk data")
                chunks.feed(data)
                read.append(data)
                wanted -= len(data) if wanted > 0 else 0
                continue
            line = self.rfile.readline(framing.MAX_CHUNK_LINE_BYTES + 1)
            if not line.endswith(b"\n") and len(line) <= framing.MAX_CHUNK_LINE_BYTES:
                self._fail("unexpected end of file in a chunk line")
            chunks.feed(line)
            if chunks.broken is not None:
                self._fail(chunks.broken.message)
        if chunks.done:
            self.chunk_length = 0
        return b"".join(read)

    def _fail(self, why: str) -> None:
        self._chunked_input_error = True  # (pywsgi then discards nothing more)
        raise OSError(why)


class App:
    """The WSGI application: routes through the shared contract, then does the waiting the plan
    asks for, the gevent way (plain calls that yield implicitly)."""

    def __init__(
        self,
        telemetry: Telemetry,
        connections: gevent.pool.Pool,
        upstream: SyncUpstream | None = None,
        database: object | None = None,  # servers.db.sync_pool.SyncDatabase
    ) -> None:
        self.telemetry = telemetry
        self.upstream = upstream
        self.database = database
        # Greenlets besides connection handlers (fan-out children, disconnect watchers, the lag
        # monitor): gevent has no cheap global greenlet count, so the server counts its own.
        self.spawned = gevent.pool.Group()
        telemetry.count_tasks_with(lambda: len(connections) + len(self.spawned))
        telemetry.count_connections_with(lambda: len(connections))

    def __call__(self, environ: dict, start_response) -> Iterator[bytes]:
        return self._respond(environ, start_response)

    def _respond(self, environ: dict, start_response) -> Iterator[bytes]:
        # A generator, so the request is timed until pywsgi has written its last chunk.
        method = environ["REQUEST_METHOD"]
        head = method == "HEAD"
        # Timed from before the plan: planning /cpu is its work (the hashing).
        started = self.telemetry.request_started()
        route, plan = contract.plan(method, environ["stackbench.target"])
        status = CLIENT_CLOSED_STATUS
        try:
            match plan:
                case Stream():
                    start_response("200 OK", stream_headers(IMPL))
                    status = 200
                    if not head:
                        with self._cancelled_if_client_leaves(environ):
                            yield from self._stream(plan)
                    return
                case Reply(response=response):
                    pass
                case Metrics():
                    response = self.telemetry.exposition()
                case Lag():
                    response = self.telemetry.lag()
                case Echo():
                    response = self._echo(environ)
                case Sleep(ms=ms):
                    with self._cancelled_if_client_leaves(environ):
                        gevent.sleep(ms / 1000)
                    response = plan.response()
                case Fanout():
                    with self._cancelled_if_client_leaves(environ):
                        self._fanout(plan)
                    response = plan.response()
                case Upstream():
                    with self._cancelled_if_client_leaves(environ):
                        response = call_upstream(self.upstream, plan, self.spawned)
                case Database():
                    with self._cancelled_if_client_leaves(environ):
                        response = call_database(self.database, plan)
                case Blocking():
                    call_blocking(plan)
                    response = plan.response()
            if response.close_connection:
                # pywsgi would read and discard the rest of the body after answering, for as
                # long as the client trickles it: tell its input the stream is unusable, so the
                # connection closes after the response instead.
                environ["wsgi.input"]._chunked_input_error = True
            headers = response_headers(IMPL, response)
            if environ["stackbench.handler"].close_connection and not response.close_connection:
                headers.append(("Connection", "close"))  # the client's, echoed
            start_response(f"{response.status} {reason(response.status)}", headers)
            status = response.status
            if not head:
                yield response.body
        except ClientGone:
            status = CLIENT_CLOSED_STATUS
            environ["stackbench.socket"].close()
        finally:
            self.telemetry.request_finished(route, method, status, started)

    def _stream(self, plan: Stream) -> Iterator[bytes]:
        for index in range(plan.chunks):
            if index:
                gevent.sleep(plan.ms / 1000)
            yield plan.chunk(index)

    def _fanout(self, plan: Fanout) -> None:
        children = gevent.pool.Group()
        for _ in range(plan.children):
            self.spawned.add(children.spawn(gevent.sleep, plan.ms / 1000))
        try:
            children.join(raise_error=True)
        finally:
            children.kill()  # a child failed or the client left: cancel the rest

    def _echo(self, environ: dict) -> Response:
        declared = environ.get("CONTENT_LENGTH")
        if declared and int(declared) > contract.MAX_BODY_BYTES:
            return Echo.too_large()  # refuse before reading a byte of it
        handler = environ["stackbench.handler"]
        # The body must be in within the body timeout: the reaper enforces it.
        handler.waiting_for, handler.waiting_since = "body", time.monotonic()
        try:
            body = environ["wsgi.input"].read(contract.MAX_BODY_BYTES + 1)
        except HeadTimeout:
            return Echo.timed_out()
        except (OSError, ValueError):  # pywsgi: body ended early, or a chunk size is garbage
            if _at_end_of_file(environ["stackbench.socket"]):
                raise ClientGone from None  # it left mid-body: 499, as on every server
            return Echo.incomplete()
        finally:
            handler.waiting_for = None
        if len(body) > contract.MAX_BODY_BYTES:
            return Echo.too_large()
        return Echo.response(body, environ.get("CONTENT_TYPE"))

    def _cancelled_if_client_leaves(self, environ: dict) -> "_DisconnectWatch":
        return _DisconnectWatch(self.spawned, environ["stackbench.socket"])


def _normalized(name: bytes, value: bytes) -> bytes:
    """A field's value as pywsgi's exact comparisons need it: `Expect: 100-Continue` is
    100-continue (RFC 9110: case-insensitive), which pywsgi would not answer."""
    if name == b"expect" and value.lower() == b"100-continue":
        return b"100-continue"
    return value


def _at_end_of_file(sock: socket.socket) -> bool:
    """Whether the client has closed its side. (A gevent socket waits for data whatever the
    flags, so MSG_DONTWAIT is no use: wait a millisecond at most instead.)"""
    try:
        with gevent.Timeout(0.001):
            return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, gevent.Timeout):  # nothing more yet, or a reset
        return False


class _DisconnectWatch:
    """While the request waits, a helper greenlet peeks at its socket; end-of-file means the
    client is gone, so it throws ClientGone into the request's greenlet (and through it, into
    any fan-out children)."""

    def __init__(self, spawned: gevent.pool.Group, sock: socket.socket) -> None:
        self._spawned = spawned
        self._sock = sock
        self._watcher: gevent.Greenlet | None = None

    def __enter__(self) -> None:
        self._watcher = self._spawned.spawn(self._watch, gevent.getcurrent())

    def __exit__(self, *exc_info: object) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            # Blocking: the watcher must have let go of the socket before pywsgi reads from it.
            watcher.kill(block=True)
            # The killed greenlet keeps its GreenletExit, whose traceback's frames held this
            # object, which held the greenlet: a cycle only a full collection frees, so every
            # finished request left ~6 KiB of garbage behind (measured by RSS under Locust).
            exit_info = getattr(watcher, "_exc_info", None)
            if exit_info and exit_info[1] is not None:
                exit_info[1].__traceback__ = None

    def _watch(self, request: gevent.Greenlet) -> None:
        try:
            alive = self._sock.recv(1, socket.MSG_PEEK)
        except OSError:
            alive = b""
        if not alive:  # data would mean a pipelined request: the client is still there
            request.kill(ClientGone, block=False)


def _reap_slow_connections(options: ServeOptions) -> None:
    while True:
        gevent.sleep(policy.REAP_INTERVAL_S)
        now = time.monotonic()
        for handler in list(Handler.live):
            waiting_for = handler.waiting_for
            if policy.expired(waiting_for, handler.waiting_since, now, options):
                handler.waiting_for = None
                handler.greenlet.kill(HeadTimeout(f"{waiting_for} timeout"), block=False)


def serve(options: ServeOptions) -> None:
    size_thread_pool()
    listener = bind(options)
    telemetry = make_telemetry(
        ServerInfo(
            IMPL,
            "gevent",
            gevent.__version__,
            f"gevent.pywsgi {gevent.__version__}",
            sync_client.label(),
            db_driver(options),
        ),
        options.metrics,
    )
    connections = gevent.pool.Pool()
    Handler.options, Handler.telemetry, Handler.connections = options, telemetry, connections
    telemetry.limit_connections(options.max_connections)
    upstream = SyncUpstream(options.upstream) if options.upstream else None
    app = App(telemetry, connections, upstream, open_database(options, IMPL))
    server = pywsgi.WSGIServer(listener, app, spawn=connections, handler_class=Handler, log=None)
    app.spawned.spawn(_reap_slow_connections, options)
    if telemetry.enabled:
        app.spawned.spawn(monitor_lag, telemetry)
    stopping = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stopping.set)
    server.start()
    announce(IMPL, listener)
    stopping.wait()
    _drain(server, connections, options.drain_timeout)
    if upstream is not None:
        upstream.close()
    if app.database is not None:
        app.database.close()


def _drain(server: pywsgi.WSGIServer, connections: gevent.pool.Pool, timeout: float) -> None:
    server.close()  # stop accepting; the listening socket is closed
    Handler.draining = True
    for handler in list(Handler.live):
        if handler.waiting_for == "idle":
            handler.greenlet.kill(block=False)  # waiting for a next request that won't come
    connections.join(timeout=timeout)
    connections.kill(block=True, timeout=1)
