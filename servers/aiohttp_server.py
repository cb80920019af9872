"""The aiohttp server: aiohttp's low-level web server on asyncio (or uvloop), one task per
connection.

The stackless model as most Python code meets it: coroutines, explicit `await`, TaskGroup for
structured fan-out. A synchronous library must go to a thread pool or it stalls the event loop.
aiohttp does not cancel a handler whose client has gone unless asked: stackbench asks
(`handler_cancellation=True`), so all three servers stop a request's work when its client leaves.
Routing is the shared contract's, not aiohttp's router, so aiohttp serves exactly what the
others serve.
"""

from __future__ import annotations

import asyncio
import platform
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import aiohttp
from aiohttp import http_exceptions, web, web_protocol
from aiohttp.http import HttpRequestParser, HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD

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
    legacy_blocking_call,
)
from servers.lifecycle import (
    ServeOptions,
    announce,
    bind,
    log_refusal,
    overloaded_response,
    response_headers,
    stream_headers,
)
from servers.protocol import framing, policy
from servers.protocol.framing import Rejection
from servers.runtime.asyncio_calls import call_database, call_upstream, db_driver, open_database
from servers.telemetry import (
    CLIENT_CLOSED_STATUS,
    LAG_INTERVAL_S,
    ServerInfo,
    Telemetry,
    lag_after,
    make_telemetry,
)
from servers.upstream import aiohttp_client
from servers.upstream.aiohttp_client import AiohttpUpstream

IMPL = "aiohttp"


def count_live_tasks() -> int:
    """Live asyncio tasks. O(n): `all_tasks()` copies the task registry and drops finished
    tasks, 1.2 ms at 10k tasks and 16 ms at 100k here (benchmarks/task_count_cost.py), once per
    scrape. The O(1) size of the registry would be cheaper but counts finished tasks that wait
    for the garbage collector, so the gauge would not return to its baseline."""
    return len(asyncio.all_tasks())


class AiohttpApp:
    def __init__(self, telemetry: Telemetry, options: ServeOptions) -> None:
        self.telemetry = telemetry
        self.body_timeout = policy.limit("body", options) or policy.BODY_TIMEOUT_CAP_S
        self.offload_pool = ThreadPoolExecutor(
            contract.OFFLOAD_THREADS, thread_name_prefix="offload"
        )
        telemetry.count_tasks_with(count_live_tasks)
        self.upstream: AiohttpUpstream | None = None  # made in the running loop, by _serve
        self.database = None  # servers.db.asyncpg_pool.AsyncpgDatabase, made by _serve too

    async def handle(self, request: _Request) -> web.StreamResponse:
        if request.rejection is not None:
            return self.refuse(request, request.rejection)
        method = request.method
        # Timed from before the plan: planning /cpu is its work (the hashing).
        started = self.telemetry.request_started()
        route, plan = contract.plan(method, request.raw_path)
        status = CLIENT_CLOSED_STATUS  # stays so if the handler is cancelled: the client left
        try:
            match plan:
                case Stream():
                    answer = await self._stream(request, plan)
                case _:
                    answer = _web_response(await self._execute(request, plan))
            status = answer.status
            return answer
        finally:
            self.telemetry.request_finished(route, method, status, started)

    def refuse(self, request: web.BaseRequest, rejection: Rejection) -> web.StreamResponse:
        """Answer a request the framing policy refuses, count it, log it in one line; the
        connection closes after the response."""
        started = self.telemetry.request_started()
        log_refusal(IMPL, rejection, request.remote)
        answer = _web_response(rejection.response())
        answer.force_close()
        self.telemetry.request_finished(contract.OTHER_ROUTE, "other", rejection.status, started)
        return answer

    async def _execute(self, request: web.BaseRequest, plan: contract.Plan) -> Response:
        match plan:
            case Reply(response=response):
                return response
            case Metrics():
                return self.telemetry.exposition()
            case Lag():
                return self.telemetry.lag()
            case Echo():
                return await _echo(request, self.body_timeout)
            case Sleep(ms=ms):
                await asyncio.sleep(ms / 1000)
                return plan.response()
            case Fanout():
                # Leaving the TaskGroup early (a child failed, or this handler was cancelled
                # because the client left) cancels every child still running.
                async with asyncio.TaskGroup() as children:
                    for _ in range(plan.children):
                        children.create_task(asyncio.sleep(plan.ms / 1000))
                return plan.response()
            case Upstream():
                return await call_upstream(self.upstream, plan)
            case Database():
                return await call_database(self.database, plan)
            case Blocking(ms=ms, offload=True, kind=kind):
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self.offload_pool, legacy_blocking_call, ms, kind)
                return plan.response()
            case Blocking(ms=ms, offload=False, kind=kind):
                legacy_blocking_call(ms, kind)  # inline: the event loop and every connection wait
                return plan.response()
        raise AssertionError(f"unhandled plan {plan!r}")  # pragma: no cover

    async def _stream(self, request: web.BaseRequest, plan: Stream) -> web.StreamResponse:
        answer = web.StreamResponse(status=200, headers=dict(stream_headers(IMPL)))
        answer.enable_chunked_encoding()
        await answer.prepare(request)
        if request.method == "HEAD":
            return answer  # aiohttp would write the chunks: the head alone
        for index in range(plan.chunks):
            if index:
                await asyncio.sleep(plan.ms / 1000)
            await answer.write(plan.chunk(index))
        await answer.write_eof()
        return answer


async def _echo(request: web.BaseRequest, body_timeout: float) -> Response:
    declared = request.content_length
    if declared is not None and declared > contract.MAX_BODY_BYTES:
        return Echo.too_large()  # refuse before reading a byte of it
    if request.headers.get("Expect", "").lower() == "100-continue":
        # aiohttp's router answers Expect; its low-level server, used here, does not.
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not begun
    chunks: list[bytes] = []
    size = 0
    try:
        # aiohttp has no timeout on a request body: a client trickling one would hold the
        # connection for ever.
        async with asyncio.timeout(body_timeout):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > contract.MAX_BODY_BYTES:
                    return Echo.too_large()
                chunks.append(chunk)
    except TimeoutError:
        return Echo.timed_out()
    except http_exceptions.BadHttpMessage:  # broken chunked framing
        return Echo.incomplete()
    return Echo.response(b"".join(chunks), request.headers.get("Content-Type"))


class _GuardedHandler(web_protocol.RequestHandler):
    """aiohttp's connection protocol, plus the connection cap and a header timeout.

    aiohttp closes a connection that has not sent a complete request head within its
    keep-alive timeout (our idle timeout), but has no separate header timeout, so a client
    trickling its head would hold the connection for the whole idle timeout. This reads two
    private fields (`_waiter`: the connection is between requests; `_messages`: a head was
    parsed) and is covered by the slow-client tests."""

    # Whether llhttp holds no part of a message: before the connection's first read, and
    # after a read (made while waiting for a request) that ends with a head without a body.
    # Only then can what llhttp refused in a read be read again from its first byte.
    _aligned = True

    def __init__(self, manager: web.Server, guard: _Guard, **kwargs: object) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._guard.telemetry.connection_accepted()
        # aiohttp has counted this connection already: the others are one fewer.
        if policy.should_shed(len(self._guard.server.connections) - 1, self._guard.options):
            self._guard.telemetry.connection_rejected()
            transport.write(overloaded_response(IMPL))  # type: ignore[attr-defined]
            self.force_close()  # the transport flushes the 503 before it closes

    def data_received(self, data: bytes) -> None:
        waiting_for_head = self._waiter is not None and not self._waiter.done()
        aligned, self._aligned = self._aligned, False
        if aligned and data[:1] in b"\r\n" and self._bare_line_end(data):
            return
        super().data_received(data)
        messages = self._messages
        if messages or not waiting_for_head:
            self._cancel_head_timer()
            if messages:
                message, payload = messages[-1]
                if payload is EMPTY_PAYLOAD:
                    if type(message) is web_protocol._ErrInfo:
                        if aligned:
                            self._read_again(data)
                    elif waiting_for_head and data[-4:] == b"\r\n\r\n":
                        self._aligned = True
        elif self._head_timer is None:
            self._head_timer = asyncio.get_running_loop().call_later(
                self._guard.options.header_timeout, self._head_too_slow
            )

    def _bare_line_end(self, data: bytes) -> bool:
        """Whether `data`, a connection's first bytes, has a bare CR or LF before its request
        line, which llhttp skips and the policy refuses (only CRLF is an empty line); if so,
        the refusal is queued and the bytes are not read."""
        at = framing.empty_lines(data)
        if data[at : at + 1] not in (b"\r", b"\n"):
            return False
        self._queue_refusal(framing.BARE_LF)
        self.close()  # nothing more is read
        return True

    def _queue_refusal(self, rejection: Rejection) -> None:
        """A refusal for the handler to answer in order, as aiohttp queues its parser's."""
        error = _PolicyVerdict(rejection)
        self._messages.append(
            (web_protocol._ErrInfo(status=400, exc=error, message=error.message), EMPTY_PAYLOAD)
        )
        self._request_count += 1
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _read_again(self, data: bytes) -> None:
        """llhttp refused `data` (a read from a message's first byte), and with it every
        message it had read in `data` before the refused one: a valid request followed by
        anything after `Connection: close` (or HTTP/1.0) was answered 400, as was one
        followed by a malformed request. Read again with a new parser: the messages before
        the refused bytes are handled; what follows a message that closes the connection is
        dropped (RFC 9112 section 9.6); the refused request gets the policy's verdict on its
        own bytes. (Only on a refusal: the hot path is a type test.)"""
        refused = _first_refused(data, self._loop)
        if refused is None:  # read alone, the bytes are not refused: keep llhttp's verdict
            return
        before = _parsed(data[: refused - 1], self._loop)
        if before and not _complete(before[-1][1]):
            return  # refused in a message's body: that message is what is refused
        error = self._messages.pop()[0]
        self._request_count -= 1
        self._parser = _request_parser(self, self._loop)
        if refused > 1:
            web_protocol.RequestHandler.data_received(self, data[: refused - 1])
        if "Data after `Connection: close`" in error.message:
            self.close()  # the messages read are answered, then the connection closes
            return
        # llhttp refuses the rest again (and stays refusing), queued after what it read.
        web_protocol.RequestHandler.data_received(self, data[refused - 1 :])
        rejection = framing.verdict_on_raw(data[_message_start(data, refused, self._loop) :])
        messages = self._messages
        if rejection is not None and messages and type(messages[-1][0]) is web_protocol._ErrInfo:
            error = _PolicyVerdict(rejection)
            messages[-1] = (
                web_protocol._ErrInfo(status=400, exc=error, message=error.message),
                EMPTY_PAYLOAD,
            )

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self._messages:
            self.force_close()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to what its parser refused (and to a handler's crash): the
        contract's JSON error and one log line, instead of a text error and a traceback."""
        if status != 400 or not isinstance(exc, http_exceptions.HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        return self._guard.app.refuse(request, _parser_verdict(exc))


class _PolicyVerdict(http_exceptions.BadHttpMessage):
    """The framing policy's verdict on bytes llhttp refused (or would have read otherwise)."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.message)
        self.rejection = rejection


class _Probe:
    """The protocol a throwaway parser reports to: nothing is paused or resumed."""

    transport = None

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, **_: object) -> None:
        pass


def _request_parser(protocol: object, loop: asyncio.AbstractEventLoop) -> HttpRequestParser:
    """A parser as aiohttp's RequestHandler makes it, with _GuardedServer's limits."""
    return HttpRequestParser(
        protocol,
        loop,
        2**16,  # aiohttp's read_bufsize
        max_line_size=MAX_TARGET_BYTES,
        max_field_size=framing.MAX_FIELD_BYTES,
        max_headers=framing.MAX_HEADER_COUNT + 1,
        payload_exception=aiohttp.http_exceptions.BadHttpMessage,
        max_msg_queue_size=web_protocol.MAX_MSG_QUEUE_SIZE,
    )


def _parsed(prefix: bytes, loop: asyncio.AbstractEventLoop) -> list | None:
    """The messages a new parser reads in `prefix` (with their payloads); None if it
    refuses it."""
    try:
        return list(_request_parser(_Probe(), loop).feed_data(prefix)[0])
    except http_exceptions.HttpProcessingError:
        return None


def _complete(payload: aiohttp.StreamReader) -> bool:
    return payload is EMPTY_PAYLOAD or payload.is_eof()


def _first_refused(data: bytes, loop: asyncio.AbstractEventLoop) -> int | None:
    """The length of the shortest start of `data` a new parser refuses (llhttp reads byte by
    byte: every longer start is refused too), or None. A binary search: a few parses."""
    if _parsed(data, loop) is not None:
        return None
    low, high = 0, len(data)  # data[:low] is read, data[:high] refused
    while high - low > 1:
        middle = (low + high) // 2
        if _parsed(data[:middle], loop) is not None:
            low = middle
        else:
            high = middle
    return high


def _message_start(data: bytes, refused: int, loop: asyncio.AbstractEventLoop) -> int:
    """Where in `data` the refused message begins: after the messages read before it (and
    the empty lines after them)."""
    count = len(_parsed(data[: refused - 1], loop) or ())
    low, high = 0, refused - 1  # the first `high` bytes hold `count` messages
    while count and high - low > 1:
        middle = (low + high) // 2
        if len(_parsed(data[:middle], loop) or ()) >= count:
            high = middle
        else:
            low = middle
    start = high if count else 0
    return start + framing.empty_lines(data[start:])


def _parser_verdict(exc: http_exceptions.HttpProcessingError) -> Rejection:
    """What the framing policy says about a request llhttp refused, from llhttp's error (when
    the raw bytes are gone; see _GuardedHandler._read_again): a too-long request line is
    414, too many or too long headers 431, an unknown method 501, an unsupported version
    505, the rest 400."""
    text = str(exc.message)
    match exc:
        case _PolicyVerdict(rejection=rejection):
            return rejection
        # The request line's limit differs from a header line's (see _GuardedServer).
        case http_exceptions.LineTooLong() if exc.args[1:2] == (MAX_TARGET_BYTES,):
            return Rejection(
                414, f"request line longer than {framing.MAX_REQUEST_LINE_BYTES} bytes"
            )
        case http_exceptions.LineTooLong():
            return Rejection(431, f"request head larger than {framing.MAX_HEAD_BYTES} bytes")
        case http_exceptions.BadHttpMessage() if "Too many headers" in text:
            return Rejection(431, f"more than {framing.MAX_HEADER_COUNT} header fields")
        case http_exceptions.BadHttpMessage() if "Content-Length overflow" in text:
            return Rejection(413, f"body larger than {contract.MAX_BODY_BYTES} bytes")
        case http_exceptions.BadHttpMethod() if framing.is_token(method := _quoted_method(text)):
            return Rejection(501, f"method {method[:20]} not implemented")
        case http_exceptions.BadStatusLine(line=line) if framing.is_other_version(line + text):
            return Rejection(505, "HTTP version not supported")
    return Rejection(400, text.split("\n")[0][:200] or "malformed request")


def _quoted_method(text: str) -> str:
    # llhttp quotes the line it refused: "Invalid method encountered:\n\n  b'BREW / ..."
    start = text.find("b'")
    return text[start + 2 :].split(" ")[0] if start >= 0 else ""


# llhttp limits the request target, not the whole line: the longest target the line's limit
# allows (with the shortest methods, GET and PUT); the request factory checks the line itself.
# Its error tells the two limits apart by their values, which therefore must differ.
MAX_TARGET_BYTES = framing.MAX_REQUEST_LINE_BYTES - len("GET  HTTP/1.1\r\n")
assert MAX_TARGET_BYTES != framing.MAX_FIELD_BYTES
_VERSION_TEXT = {HttpVersion11: "1.1", HttpVersion10: "1.0"}
_ACCEPTED_HEADS = framing.AcceptedHeads()


class _Request(web.BaseRequest):
    """aiohttp's request, with the framing policy's verdict on it."""

    ATTRS = web.BaseRequest.ATTRS | frozenset(["rejection"])
    rejection: Rejection | None = None


@dataclass
class _Guard:
    server: web.Server
    telemetry: Telemetry
    options: ServeOptions
    app: AiohttpApp


class _GuardedServer(web.Server):
    """aiohttp's low-level server, making _GuardedHandler connections."""

    def __init__(
        self, handler: AiohttpApp, *, telemetry: Telemetry, options: ServeOptions, **kwargs
    ) -> None:
        # lingering_time: after refusing a body, aiohttp reads on for this long (10 s by
        # default, while a slow client trickles): read briefly, so the client sees the answer
        # rather than a reset, then close.
        super().__init__(
            handler.handle,
            request_factory=self._request_checked,
            keepalive_timeout=options.idle_timeout,
            lingering_time=policy.REFUSED_BODY_LINGER_S,
            max_line_size=MAX_TARGET_BYTES,
            max_field_size=framing.MAX_FIELD_BYTES,
            max_headers=framing.MAX_HEADER_COUNT + 1,  # one more: check_request says 431
            **kwargs,
        )
        self._guard = _Guard(self, telemetry, options, handler)
        telemetry.limit_connections(options.max_connections)

    def _request_checked(
        self,
        message: RawRequestMessage,
        payload: aiohttp.StreamReader,
        protocol: web_protocol.RequestHandler,
        writer: aiohttp.abc.AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        """aiohttp's request, checked against the framing policy (what llhttp lets through),
        and answering as HTTP/1.1 whatever version the client claimed: aiohttp would answer
        `HTTP/2.0 505` to an HTTP/2.0 request line, and its parser errors as HTTP/1.0."""
        version = message.version
        rejection = None
        if message.method != "UNKNOWN":  # aiohttp's stand-in message for a parser error
            key = (message.method, message.path, version, message.raw_headers)
            if key in _ACCEPTED_HEADS:  # the same head was accepted before
                return _Request(message, payload, protocol, writer, task, self._loop)
            fields = message.raw_headers
            rejection = framing.check_line(
                len(message.method), len(message.path)
            ) or framing.check_request(
                message.method,
                _VERSION_TEXT.get(version) or f"{version.major}.{version.minor}",
                fields,
                field_sizes=False,  # llhttp's max_field_size
            )
            # llhttp limits each field, not the head: with few fields it cannot be too large.
            if (
                rejection is None
                and len(fields) > framing.MAX_HEAD_BYTES // (framing.MAX_FIELD_BYTES + 4)
                and framing.head_size(fields) > framing.MAX_HEAD_BYTES
            ):
                rejection = Rejection(
                    431, f"request head larger than {framing.MAX_HEAD_BYTES} bytes"
                )
        if rejection is not None or message.method == "UNKNOWN" or version > HttpVersion11:
            message = message._replace(version=HttpVersion11)  # a namedtuple's public API
        else:
            _ACCEPTED_HEADS.remember(
                key, len(message.path) + framing.head_size(message.raw_headers)
            )
        request = _Request(message, payload, protocol, writer, task, self._loop)
        if rejection is not None:
            request.rejection = rejection
        return request

    def __call__(self) -> _GuardedHandler:
        return _GuardedHandler(self, self._guard, loop=self._loop, **self._kwargs)


def _web_response(response: Response) -> web.Response:
    # aiohttp computes Content-Length itself (and keeps it, without the body, for HEAD).
    headers = [(k, v) for k, v in response_headers(IMPL, response) if k != "Content-Length"]
    return web.Response(status=response.status, body=response.body, headers=headers)


async def _monitor_lag(telemetry: Telemetry) -> None:
    while True:
        armed = time.perf_counter()
        await asyncio.sleep(LAG_INTERVAL_S)
        telemetry.observe_lag(lag_after(armed))


async def _serve(sock: socket.socket, options: ServeOptions) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    if options.uvloop:
        import uvloop

        runtime, runtime_version = "uvloop", uvloop.__version__
    else:
        runtime, runtime_version = "asyncio", platform.python_version()
    telemetry = make_telemetry(
        ServerInfo(
            IMPL,
            runtime,
            runtime_version,
            f"aiohttp {aiohttp.__version__}",
            aiohttp_client.label(),
            db_driver(options),
        ),
        options.metrics,
    )
    app = AiohttpApp(telemetry, options)
    if options.upstream is not None:
        app.upstream = AiohttpUpstream(options.upstream)
    app.database = await open_database(options, IMPL)
    # asyncio sets TCP_NODELAY on every TCP transport it creates, uvloop too.
    server = _GuardedServer(
        app,
        telemetry=telemetry,
        options=options,
        handler_cancellation=options.cancel_on_disconnect,
        access_log=None,
    )
    runner = web.ServerRunner(server, shutdown_timeout=options.drain_timeout)
    await runner.setup()
    telemetry.count_connections_with(lambda: len(server.connections))
    await web.SockSite(runner, sock).start()
    lag_monitor = asyncio.create_task(_monitor_lag(telemetry)) if telemetry.enabled else None
    announce(IMPL, sock)
    await stopping.wait()
    # Drain: stop accepting, close idle keep-alive connections, wait for in-flight requests up
    # to the drain timeout (aiohttp's shutdown does all three).
    await runner.cleanup()
    if lag_monitor is not None:
        lag_monitor.cancel()
    app.offload_pool.shutdown(wait=False, cancel_futures=True)
    if app.upstream is not None:
        await app.upstream.aclose()
    if app.database is not None:
        await app.database.close()


def serve(options: ServeOptions) -> None:
    sock = bind(options)
    if options.uvloop:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(sock, options))
    else:
        asyncio.run(_serve(sock, options))
