"""Ambiguous and malformed requests, as an adversarial client (or a proxy that frames
differently) would send them, each with the status every server must answer.

Each case's bytes are followed on the wire by `HIDDEN`, a second request in the same segment:
a server that frames the first request differently from the policy would serve it (request
smuggling). A refused request is answered once, the connection closes, and HIDDEN is never
served. Cases are data so that `benchmarks/` and probes can replay them against any server.
"""

# ruff: noqa: E501  (one case per line reads as a table)
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ACCEPTED", "CORPUS", "HIDDEN", "Case", "statuses"]

HIDDEN = b"GET /smuggled HTTP/1.1\r\nHost: hidden\r\n\r\n"


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    status: int
    # Whether the connection stays open for the next request (accepted cases only).
    keep_alive: bool = True
    # Whether HIDDEN follows in the same bytes (the HTTP/2.0 preface is complete without it).
    followed: bool = True

    @property
    def wire(self) -> bytes:
        return self.data + HIDDEN if self.followed else self.data

    def __str__(self) -> str:
        return self.name


def _post(headers: bytes, body: bytes = b"") -> bytes:
    return b"POST /echo HTTP/1.1\r\nHost: corpus\r\n" + headers + b"\r\n" + body


def _get(headers: bytes = b"", line: bytes = b"GET /json HTTP/1.1") -> bytes:
    return line + b"\r\n" + headers + b"\r\n"


HOST = b"Host: corpus\r\n"
CHUNKED_EMPTY = b"0\r\n\r\n"
CHUNKED = b"Transfer-Encoding: chunked\r\n"


def _chunked(body: bytes) -> bytes:
    return _post(CHUNKED, body)


CORPUS: tuple[Case, ...] = (
    # -- message framing (RFC 9112 section 6) -------------------------------------------------
    Case("cl-and-te", _post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", CHUNKED_EMPTY), 400),
    Case("te-and-cl", _post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", CHUNKED_EMPTY), 400),
    Case("cl-conflicting", _post(b"Content-Length: 0\r\nContent-Length: 37\r\n"), 400),
    Case("cl-conflicting-list", _post(b"Content-Length: 0, 37\r\n"), 400),
    Case("cl-repeated-same", _post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), 400),
    Case("cl-repeated-same-list", _post(b"Content-Length: 5, 5\r\n", b"hello"), 400),
    Case("cl-signed", _post(b"Content-Length: +5\r\n", b"hello"), 400),
    Case("cl-underscored", _post(b"Content-Length: 0_5\r\n", b"hello"), 400),
    Case("cl-negative", _post(b"Content-Length: -1\r\n"), 400),
    Case("cl-hex", _post(b"Content-Length: 0x5\r\n", b"hello"), 400),
    Case("cl-empty", _post(b"Content-Length: \r\n"), 400),
    Case("te-not-final", _post(b"Transfer-Encoding: chunked, gzip\r\n", CHUNKED_EMPTY), 400),
    Case("te-without-chunked", _post(b"Transfer-Encoding: gzip\r\n", CHUNKED_EMPTY), 400),
    Case("te-chunked-twice", _post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", CHUNKED_EMPTY), 400),
    Case("te-unsupported-coding", _post(b"Transfer-Encoding: gzip, chunked\r\n", CHUNKED_EMPTY), 501),
    Case("te-identity", _post(b"Transfer-Encoding: identity\r\n", CHUNKED_EMPTY), 400),
    Case("te-in-http10", b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_EMPTY, 400),
    Case("te-trailing-comma", _post(b"Transfer-Encoding: chunked,\r\n", b"5\r\nhello\r\n0\r\n\r\n"), 400),
    Case("te-leading-comma", _post(b"Transfer-Encoding: ,chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"), 400),
    Case("te-vertical-tab", _post(b"Transfer-Encoding: \x0bchunked\r\n", CHUNKED_EMPTY), 400),
    Case("chunk-size-garbage", _post(b"Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n0\r\n\r\n"), 400),
    Case("chunk-size-overflow", _post(b"Transfer-Encoding: chunked\r\n", b"f" * 40 + b"\r\nx\r\n0\r\n\r\n"), 400),
    # -- chunk lines (RFC 9112 section 7.1): chunk-size [ chunk-ext ] CRLF, nothing else --------
    # A chunk extension without a name: its line is `32 3b 0d 0a`.
    Case("chunk-ext-without-name", _chunked(b"2;\r\naa\r\n0\r\n\r\n"), 400),
    # Whitespace after the size with no extension: some parsers read size 10, some refuse.
    Case("chunk-size-then-space", _chunked(b"a \r\n0123456789\r\n0\r\n\r\n"), 400),
    Case("chunk-size-then-tab", _chunked(b"a\t\r\n0123456789\r\n0\r\n\r\n"), 400),
    Case("chunk-ext-after-space", _chunked(b"2 ;a\r\naa\r\n0\r\n\r\n"), 400),
    Case("chunk-ext-name-after-space", _chunked(b"2; a\r\naa\r\n0\r\n\r\n"), 400),
    Case("chunk-ext-not-a-token", _chunked(b"2;a(b\r\naa\r\n0\r\n\r\n"), 400),
    Case("chunk-ext-unterminated-quote", _chunked(b'2;a="b\r\naa\r\n0\r\n\r\n'), 400),
    Case("chunk-ext-on-last-without-name", _chunked(b"2\r\naa\r\n0;\r\n\r\n"), 400),
    # 20 hex digits: past any 64-bit size (h11 read it and waited for 2**80 bytes).
    Case("chunk-size-20-digits", _chunked(b"f" * 20 + b"\r\naa\r\n0\r\n\r\n"), 400),
    Case("chunk-size-17-digits", _chunked(b"1" + b"0" * 16 + b"\r\naa\r\n0\r\n\r\n"), 400),
    Case("chunk-line-bare-lf", _chunked(b"2\naa\r\n0\r\n\r\n"), 400),
    Case("chunk-data-then-bare-lf", _chunked(b"2\r\naa\n0\r\n\r\n"), 400),
    Case("chunk-last-line-bare-lf", _chunked(b"2\r\naa\r\n0\n\r\n"), 400),
    Case("chunk-body-end-bare-lf", _chunked(b"2\r\naa\r\n0\r\n\n"), 400),
    Case("chunk-trailer-bare-lf", _chunked(b"2\r\naa\r\n0\r\nX-T: a\n\r\n"), 400),
    Case("chunk-trailer-folded", _chunked(b"2\r\naa\r\n0\r\nX-T: a\r\n b\r\n\r\n"), 400),
    Case("chunk-trailer-no-colon", _chunked(b"2\r\naa\r\n0\r\nX-T\r\n\r\n"), 400),
    Case("chunk-trailer-del", _chunked(b"2\r\naa\r\n0\r\nX-T: a\x7fb\r\n\r\n"), 400),
    # -- field syntax (RFC 9112 section 5, RFC 9110 section 5.5) ------------------------------
    Case("space-before-colon", _post(b"Content-Length : 37\r\n"), 400),
    Case("tab-before-colon", _post(b"Content-Length\t: 37\r\n"), 400),
    Case("obs-fold", _get(HOST + b"X-Folded: a\r\n b\r\n"), 400),
    Case("obs-fold-te", _post(b"Transfer-Encoding:\r\n chunked\r\n", CHUNKED_EMPTY), 400),
    Case("nul-in-value", _get(HOST + b"X-Value: a\x00b\r\n"), 400),
    Case("cr-in-value", _get(HOST + b"X-Value: a\rb\r\n"), 400),
    Case("del-in-value", _get(HOST + b"X-Value: a\x7fb\r\n"), 400),
    Case("space-in-name", _get(HOST + b"X Value: a\r\n"), 400),
    Case("empty-name", _get(HOST + b": a\r\n"), 400),
    Case("no-colon", _get(HOST + b"X-Value\r\n"), 400),
    # -- the request line and Host (RFC 9112 sections 3 and 3.2) ------------------------------
    Case("no-host", _get(), 400),
    Case("two-hosts", _get(HOST + b"Host: other\r\n"), 400),
    Case("space-in-target", _get(HOST, b"GET /js on HTTP/1.1"), 400),
    Case("obs-text-in-target", _get(HOST, b"GET /json\xff HTTP/1.1"), 400),
    Case("cr-cr-lf-line", _get(HOST, b"GET /json HTTP/1.1\r"), 400),
    Case("bare-lf-header", _get(HOST + b"X-Value: a\nX-Other: b\r\n"), 400),
    Case("bare-lf-everywhere", b"GET /json HTTP/1.1\nHost: corpus\n\n", 400),
    Case("version-malformed", _get(HOST, b"GET /json HTTP/1.x"), 400),
    # One order of checks: the line's syntax (400), the version (505), the method (501), the
    # target's form (400: the asterisk-form is for OPTIONS only, RFC 9112 section 3.2.4).
    Case("version-2", _get(HOST, b"GET /json HTTP/2.0"), 505),
    Case("version-0.9", _get(HOST, b"GET /json HTTP/0.9"), 505),
    Case("version-2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, followed=False),
    Case("version-2-unknown-method", _get(HOST, b"BREW /json HTTP/2.0"), 505),
    Case("version-malformed-unknown-method", _get(HOST, b"BREW /json HTTP/1.x"), 400),
    Case("method-unknown", _get(HOST, b"BREW /json HTTP/1.1"), 501),
    Case("method-lowercase", _get(HOST, b"get /json HTTP/1.1"), 501),
    Case("method-not-a-token", _get(HOST, b"G(T /json HTTP/1.1"), 400),
    Case("method-rtsp", _get(HOST, b"ANNOUNCE /x HTTP/1.1"), 501),
    Case("method-pri", _get(HOST, b"PRI * HTTP/1.1"), 501),
    Case("method-ssdp", _get(HOST, b"M-SEARCH * HTTP/1.1"), 501),
    Case("asterisk-not-options", _get(HOST, b"GET * HTTP/1.1"), 400),
    # -- limits -------------------------------------------------------------------------------
    Case("request-line-20k", _get(HOST, b"GET /" + b"a" * 20 * 1024 + b" HTTP/1.1"), 414),
    Case("head-70k", _get(HOST + b"".join(b"X-Fill-%d: %s\r\n" % (i, b"f" * 7000) for i in range(10))), 431),
    Case("headers-101", _get(HOST + b"".join(b"X-%d: v\r\n" % i for i in range(100))), 431),
    Case("headers-1000", _get(HOST + b"".join(b"X-%d: v\r\n" % i for i in range(1000))), 431),
    Case("body-2mib-declared", _post(b"Content-Length: 2097152\r\n"), 413),
    Case("body-cl-huge", _post(b"Content-Length: 99999999999999999999999999\r\n"), 413),
)  # fmt: skip

# Requests at the edge of the policy that every server must serve (and then serve HIDDEN).
ACCEPTED: tuple[Case, ...] = (
    Case("te-chunked-mixed-case", _post(b"Transfer-Encoding: ChUnKeD\r\n", b"5\r\nhello\r\n0\r\n\r\n"), 200),
    Case("http10-without-host", b"GET /json HTTP/1.0\r\n\r\n", 200, keep_alive=False, followed=False),
    # Answered, then closed: what follows a request that ends its connection is not read.
    Case("http10-then-more", b"GET /json HTTP/1.0\r\n\r\n", 200, keep_alive=False),
    Case("close-then-more", _get(HOST + b"Connection: close\r\n"), 200, keep_alive=False),
    # RFC 9112 section 2.2: empty lines (CRLF) before a request line are ignored.
    Case("empty-line-first", b"\r\n" + _get(HOST), 200),
    Case("empty-lines-first", b"\r\n\r\n\r\n" + _get(HOST), 200),
    Case("chunk-ext-named", _chunked(b"2;a\r\naa\r\n0\r\n\r\n"), 200),
    Case("chunk-ext-valued", _chunked(b'2;a=b;c="d \\"e"\r\naa\r\n0;z\r\n\r\n'), 200),
    Case("chunk-size-16-digits", _chunked(b"0" * 15 + b"2\r\naa\r\n0\r\n\r\n"), 200),
    Case("chunk-trailer", _chunked(b"2\r\naa\r\n0\r\nX-T: a\r\n\r\n"), 200),
    Case("absolute-form", _get(HOST, b"GET http://corpus/json HTTP/1.1"), 200),
    # The asterisk-form (RFC 9112 section 3.2.4) names no route: the contract's 404, then HIDDEN.
    Case("options-asterisk", _get(HOST, b"OPTIONS * HTTP/1.1"), 404),
    # pywsgi hands an upgrade request the raw socket as its body, Content-Length ignored.
    Case("upgrade-with-length", _post(b"Upgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 5\r\n", b"hello"), 200),
    Case("headers-100", _get(HOST + b"".join(b"X-%d: v\r\n" % i for i in range(99))), 200),
    Case("request-line-8000", _get(HOST, b"GET /json?" + b"a" * 7900 + b" HTTP/1.1"), 200),
)  # fmt: skip


def statuses(wire: bytes) -> list[int]:
    """The statuses of the final responses in `wire`, interim 1xx left out. Status lines are
    found by pattern: the corpus's response bodies are short JSON that never hold one."""
    found = [int(code) for code in _STATUS_LINE.findall(wire)]
    return [code for code in found if code >= 200]


_STATUS_LINE = re.compile(rb"HTTP/\d\.\d (\d{3}) ")
