"""The framing policy: which request heads every server refuses, with what status, free of I/O.

A request whose framing two parsers could read differently (Content-Length beside
Transfer-Encoding, two lengths, a length like `+5`, a header folded or spaced before its colon)
is how requests are smuggled past a proxy: the proxy sees one request, the server two. Every
stackbench server refuses them the same way, decided here: the error status, a JSON body, then
`Connection: close`, and nothing that follows on that connection is read as a request.

Three layers enforce it, each where its stack needs it (the README's "HTTP framing" says which):

- `check_request`: the decisions on a parsed head (method, version, Host, Content-Length,
  Transfer-Encoding, header count), for every server: h11's and llhttp's parsers accept some of
  these, pywsgi's most of them.
- `check_unfolded_head`, `check_raw_head`: for h11, what it accepts silently at the byte level
  (obsolete line folding, which it unfolds into a space; repeated lengths, which it merges) and
  the limits it applies differently.
- `parse_head`: a strict parser of a whole raw head (RFC 9112 sections 2-5), for gevent.pywsgi,
  whose own header parsing (the email package's) accepts almost anything.
- `ChunkedBody`: the lines of a chunked body (RFC 9112 section 7.1: chunk sizes, extensions,
  trailers), followed through the reads they arrive in, for the parsers that are lenient about
  them (h11 on purpose, pywsgi); llhttp (aiohttp) is as strict itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from servers import contract

__all__ = [
    "BARE_LF",
    "LINE_TOO_LONG",
    "MAX_CHUNK_LINE_BYTES",
    "MAX_HEADER_COUNT",
    "MAX_HEAD_BYTES",
    "MAX_REMEMBERED_HEAD_BYTES",
    "MAX_REQUEST_LINE_BYTES",
    "AcceptedHeads",
    "ChunkedBody",
    "Head",
    "Rejection",
    "check_chunk_line",
    "check_line",
    "check_raw_head",
    "check_request",
    "check_unfolded_head",
    "empty_lines",
    "head_size",
    "is_other_version",
    "is_token",
    "parse_head",
    "verdict_on_raw",
]

MAX_REQUEST_LINE_BYTES = 8 * 1024  # its CRLF included; longer: 414
MAX_HEAD_BYTES = 64 * 1024  # request line and all header lines; longer: 431
MAX_HEADER_COUNT = 100  # more: 431
MAX_FIELD_BYTES = 8190  # a header field's name and value together (llhttp's rule); more: 431
SUPPORTED_VERSIONS = ("1.1", "1.0")  # others: 505
# Fields that may appear once (RFC 9110 section 5.3 lets a recipient refuse repeats of a field
# that is not a list): llhttp refuses these repeated, so every server does. Content-Length and
# Transfer-Encoding repeated are the framing ambiguities themselves.
SINGLETON_FIELDS = frozenset({
    b"content-length", b"content-location", b"content-range", b"content-type", b"etag",
    b"host", b"max-forwards", b"server", b"transfer-encoding", b"user-agent",
})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Rejection(Exception):
    """A request refused before any route sees it."""

    status: int
    message: str

    def response(self) -> contract.Response:
        """The contract's JSON error, telling the client the connection closes."""
        # close_connection: the head says `Connection: close` (lifecycle.response_headers).
        return replace(contract.error(self.status, self.message[:200]), close_connection=True)


MAX_REMEMBERED_HEAD_BYTES = 2048  # larger heads are checked every time


class AcceptedHeads(set):
    """Heads the policy has accepted, remembered by a key that determines the verdict (the raw
    bytes of a head, or a parser's own fields), so that a repeated head is not checked again:
    `key in heads` (a set's own lookup: no Python call), then `heads.remember(key, size)`.

    Load generators send the same head on every request, and the checks cost 4-5 % of a
    request's instructions in the h11 and aiohttp servers (Python code on every request);
    a lookup costs a hash of bytes already in memory. Bounded: past `capacity` heads the set
    starts again, so a client sending ever-new heads costs time (its own checks), never memory.
    Callers look up only keys of at most MAX_REMEMBERED_HEAD_BYTES (hashing is O(size))."""

    capacity = 1024

    def remember(self, key: object, size: int) -> None:
        """Remember an accepted head of `size` bytes (a larger one is not kept)."""
        if size > MAX_REMEMBERED_HEAD_BYTES:
            return
        if len(self) >= self.capacity:
            self.clear()
        self.add(key)


LINE_TOO_LONG = Rejection(414, f"request line longer than {MAX_REQUEST_LINE_BYTES} bytes")
# RFC 9112 section 2.2 lets a recipient take a bare LF for a line's end; llhttp does not, and a
# proxy that differs from the server on it can be smuggled through: refused everywhere.
BARE_LF = Rejection(400, "a line ended by a bare LF (not CRLF)")
ASTERISK_NOT_OPTIONS = Rejection(400, "the asterisk-form is for OPTIONS only")
# DEL is a control character (RFC 9110 section 5.5); h11 admits it in field values.
DEL_IN_FIELD = Rejection(400, "a control character (DEL) in a header field")


@dataclass(frozen=True, slots=True)
class Head:
    """A request head that passed the policy (what `parse_head` returns)."""

    method: str
    target: str
    version: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # names lower-cased
    content_length: int | None = None


def check_request(
    method: str,
    version: str,
    headers: Iterable[tuple[bytes, bytes]],
    field_sizes: bool = True,
    asterisk: bool = False,
) -> Rejection | None:
    """The policy's decisions on a parsed head: None if the request may be served. `headers`
    are (name, value) pairs as received, in any case, one per field line. `field_sizes`:
    whether to check each field's size too (not if the parser has, or the head is small).
    `asterisk`: whether the target is `*`.

    One order of checks, so that a request wrong in several ways gets one status everywhere:
    the version (505), the method (501), the target's form (400), then the fields."""
    return _check_fields(method, version, headers, field_sizes, asterisk)[0]


def _check_fields(
    method: str,
    version: str,
    headers: Iterable[tuple[bytes, bytes]],
    field_sizes: bool,
    asterisk: bool = False,
) -> tuple[Rejection | None, bool]:
    """check_request's verdict, and whether the head has a Content-Length. (Written for
    few calls: it runs on every request, and a call costs more than the rest of a step.)"""
    if version not in SUPPORTED_VERSIONS:
        return Rejection(505, f"HTTP/{version[:10]} not supported"), False
    if method not in contract.KNOWN_METHODS:
        return Rejection(501, f"method {method[:20]} not implemented"), False
    if asterisk and method != "OPTIONS":  # RFC 9112 section 3.2.4
        return ASTERISK_NOT_OPTIONS, False
    count = 0
    seen: dict[bytes, bytes] = {}
    repeated: bytes | None = None
    lengths: list[bytes] = []
    codings: list[bytes] = []
    for name, value in headers:
        count += 1
        if field_sizes and len(name) + len(value) > MAX_FIELD_BYTES:
            return Rejection(431, f"a header field longer than {MAX_FIELD_BYTES} bytes"), False
        lowered = name.lower()
        if lowered in SINGLETON_FIELDS:
            if lowered in seen:
                repeated = lowered
            seen[lowered] = value
            if lowered == b"content-length":
                lengths.append(value)
            elif lowered == b"transfer-encoding":
                codings.append(value)
    has_length = lengths != []
    if count > MAX_HEADER_COUNT:
        return Rejection(431, f"more than {MAX_HEADER_COUNT} header fields"), has_length
    if repeated is not None:
        return Rejection(400, f"repeated {repeated.decode('latin-1')} header"), has_length
    if b"host" not in seen and version == "1.1":
        return Rejection(400, "HTTP/1.1 needs a Host header"), has_length
    if codings:
        return _check_transfer_coding(version, codings, lengths), has_length
    if has_length:
        length = _content_length(lengths)
        if isinstance(length, Rejection):
            return length, True
        if length > contract.MAX_BODY_BYTES:  # no route reads a body this large
            return Rejection(413, f"body larger than {contract.MAX_BODY_BYTES} bytes"), True
    return None, has_length


_VERSION_TEXT = {b"1.1": "1.1", b"1.0": "1.0"}
_LINE_OVERHEAD = len(b"  HTTP/1.1\r\n")  # two spaces, the version, CRLF


def check_line(method_length: int, target_length: int) -> Rejection | None:
    """The request line's limit, from its method and target (for parsers that limit only
    the target, or a head still incomplete)."""
    if method_length + target_length + _LINE_OVERHEAD > MAX_REQUEST_LINE_BYTES:
        return LINE_TOO_LONG
    return None


def check_unfolded_head(
    method: bytes,
    target: bytes,
    version: bytes,
    fields: list[tuple[bytes, bytes]],
    received: bytes,
    raw_head: Callable[[], bytes],
) -> Rejection | None:
    """The policy for a head parsed by h11, which unfolds obsolete line folding into a space
    and merges repeated Content-Length values where the policy refuses both. `received`:
    the bytes h11 parsed it from, from the head's first byte (more may follow: a body, the
    next request); `raw_head()`: exactly the head, computed only when needed (a head with a
    length; a fold-like byte pair or a bare LF anywhere in `received`; a large one)."""
    # check_line's test inline: on every request a call costs more than the test.
    if len(method) + len(target) + _LINE_OVERHEAD > MAX_REQUEST_LINE_BYTES:
        return check_line(len(method), len(target))
    text_version = _VERSION_TEXT.get(version) or version.decode("ascii")
    big = len(received) > MAX_FIELD_BYTES  # else no field can be too long
    rejection, has_length = _check_fields(
        method.decode("ascii"), text_version, fields, big, target == b"*"
    )
    if rejection is not None:
        return rejection
    if (
        has_length
        or len(received) > MAX_HEAD_BYTES
        or b"\n " in received
        or b"\n\t" in received
        or received.count(b"\n") != received.count(b"\r\n")
        or b"\x7f" in received
    ):
        return check_raw_head(raw_head())
    return None


def _check_transfer_coding(
    version: str, codings: list[bytes], lengths: list[bytes]
) -> Rejection | None:
    # RFC 9112 section 6.3: with Content-Length too, the framing is ambiguous; in HTTP/1.0
    # Transfer-Encoding is not defined; chunked must come last, and only once.
    if lengths:
        return Rejection(400, "Content-Length and Transfer-Encoding together")
    if version != "1.1":
        return Rejection(400, "Transfer-Encoding in an HTTP/1.0 request")
    tokens = [token.strip().lower() for value in codings for token in value.split(b",")]
    # An empty member (`chunked,`) is legal list syntax that parsers read differently (pywsgi
    # as no coding at all, h11 as unsupported): refused.
    if b"" in tokens:
        return Rejection(400, "an empty transfer coding")
    if tokens[-1] != b"chunked" or tokens.count(b"chunked") > 1:
        return Rejection(400, "chunked must be the final transfer coding, once")
    if len(tokens) > 1:
        return Rejection(501, "only the chunked transfer coding is supported")
    return None


def _content_length(lengths: list[bytes]) -> int | Rejection:
    # One field, one decimal number. RFC 9110 section 8.6 lets a recipient either refuse
    # repeats (`5, 5`, two fields of 5) or read them as one; llhttp refuses them, so every
    # server does. Anything but ASCII digits (`+5`, `0_5`, `0x5`, empty) is malformed.
    if len(lengths) != 1:
        return Rejection(400, "repeated Content-Length")
    value = lengths[0].strip()
    if not (value.isdigit() and value.isascii()):
        return Rejection(400, "malformed Content-Length")
    return int(value)


def check_raw_head(head: bytes) -> Rejection | None:
    """What a lenient parser lets through at the byte level of a complete head (request line
    and header lines, CRLFs included): an over-long request line or head, obsolete line
    folding, a bare LF, a repeated or listed Content-Length."""
    line_end = head.find(b"\n")
    if line_end < 0 or line_end + 1 > MAX_REQUEST_LINE_BYTES:
        return LINE_TOO_LONG
    if len(head) > MAX_HEAD_BYTES:
        return Rejection(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
    if b"\n " in head or b"\n\t" in head:
        return Rejection(400, "obsolete line folding (a header line starting with whitespace)")
    if head.count(b"\n") != head.count(b"\r\n"):
        return BARE_LF
    if b"\x7f" in head:  # (h11 refuses it in the request line itself)
        return DEL_IN_FIELD
    # h11 reads repeated lengths (`5, 5`, two fields of 5) as one, where the policy refuses.
    lowered = head.lower()
    at = lowered.find(b"\ncontent-length:")
    if at >= 0 and (
        lowered.find(b"\ncontent-length:", at + 1) >= 0
        or b"," in lowered[at : lowered.find(b"\n", at + 1)]
    ):
        return Rejection(400, "repeated Content-Length")
    return None


def head_size(headers: Iterable[tuple[bytes, bytes]]) -> int:
    """The size of the header lines as received (name, colon, space, value, CRLF), for
    parsers that limit each line but not the head."""
    return sum(len(name) + len(value) + 4 for name, value in headers)


# RFC 9110 section 5.6.2 (token), 5.5 (field-value: visible characters, SP, HTAB, obs-text).
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# The target: visible ASCII only (h11 and llhttp refuse bytes 0x80-0xFF there too).
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/(\d)\.(\d)")
_FIELD_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*")


def parse_head(head: bytes) -> Head:
    """A complete raw head (up to, not including, the blank line that ends it), parsed
    strictly. Raises `Rejection` for anything the policy refuses."""
    if len(head) > MAX_HEAD_BYTES:
        raise Rejection(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
    lines = head.split(b"\r\n")
    line = lines[0]
    if len(line) + 2 > MAX_REQUEST_LINE_BYTES:
        raise Rejection(414, f"request line longer than {MAX_REQUEST_LINE_BYTES} bytes")
    request_line = _REQUEST_LINE.fullmatch(line)
    if request_line is None:
        raise Rejection(400, "malformed request line")
    method, target, major, minor = request_line.groups()
    headers: list[tuple[bytes, bytes]] = []
    for field_line in lines[1:]:
        parsed = _FIELD_LINE.fullmatch(field_line)
        if parsed is None:
            if field_line[:1] in (b" ", b"\t"):
                raise Rejection(
                    400, "obsolete line folding (a header line starting with whitespace)"
                )
            raise Rejection(400, "malformed header line")
        headers.append((parsed[1].lower(), parsed[2]))
    version = f"{major.decode()}.{minor.decode()}"
    rejection = check_request(method.decode("ascii"), version, headers, asterisk=target == b"*")
    if rejection is not None:
        raise rejection
    lengths = [value for name, value in headers if name == b"content-length"]
    length = _content_length(lengths) if lengths else None
    assert not isinstance(length, Rejection)  # check_request refused those
    return Head(method.decode("ascii"), target.decode("latin-1"), version, headers, length)


def verdict_on_raw(received: bytes) -> Rejection | None:
    """The policy's reading of the raw bytes of a head that another parser refused: the
    same request gets the same status whichever stack's parser saw it first. None if the
    policy has no objection (the caller then keeps the other parser's verdict)."""
    line_end = received.find(b"\n")
    if line_end + 1 > MAX_REQUEST_LINE_BYTES or (
        line_end < 0 and len(received) > MAX_REQUEST_LINE_BYTES
    ):
        return LINE_TOO_LONG
    ends = [at for at in (received.find(b"\r\n\r\n"), received.find(b"\n\n")) if at >= 0]
    end = min(ends, default=-1)  # a bare LF may end a head too, for the parser to refuse
    if end < 0:
        if len(received) > MAX_HEAD_BYTES:
            return Rejection(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
        return None
    try:
        parse_head(received[:end])
    except Rejection as rejection:
        return rejection
    return None


def empty_lines(data: bytes) -> int:
    """How many bytes of empty lines (CRLF) `data` begins with: RFC 9112 section 2.2 has a
    server ignore them before a request line (a client may send one after a POST body). Only
    CRLF: a bare CR or LF there is refused, as everywhere in a head."""
    found = _EMPTY_LINES.match(data)
    return found.end() if found else 0


_EMPTY_LINES = re.compile(rb"(?:\r\n)+")

# A chunk line, CRLF included (a chunk-size line, a trailer line): longer is refused (400).
# net/http's own limit, under which go-nethttp hands it every line.
MAX_CHUNK_LINE_BYTES = 4096
MAX_CHUNK_SIZE_DIGITS = 16  # a 64-bit size (net/http, pywsgi and llhttp stop there)
# RFC 9112 section 7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS
# chunk-ext-val ] ), a name a token, a value a token or a quoted-string (RFC 9110 section
# 5.6.4). Without the BWS, as llhttp reads it: whitespace in a chunk line (`a SP CRLF`, read
# as size 10 by some parsers and refused by others) is the discrepancy that chunk-line
# smuggling through proxies uses, so none is allowed.
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,%d})(?:;%s(?:=(?:%s|%s))?)*\r\n"
    % (MAX_CHUNK_SIZE_DIGITS, _TOKEN, _TOKEN, _QUOTED)
)
MALFORMED_CHUNK_LINE = Rejection(400, "a malformed chunk line")


def check_chunk_line(line: bytes) -> int | None:
    """A chunk-size line (CRLF included): its size, or None if the policy refuses it."""
    found = _CHUNK_LINE.fullmatch(line)
    return int(found[1], 16) if found else None


class ChunkedBody:
    """A chunked body's framing, followed through the reads it arrives in, free of I/O:
    `feed(data)` with each read (from the body's first byte) returns how many of its bytes
    belong to the body (the rest is the next request's); once the body has ended, `done`;
    once a line is one the policy refuses (a chunk line, the CRLF after a chunk's data, a
    trailer line), `broken` is the Rejection and nothing more is read. The parser that reads
    the body (h11, pywsgi) is the one that frames it; this only says when it must not."""

    __slots__ = ("_left", "_line", "_state", "broken", "done")

    _SIZE, _DATA_END, _TRAILER = range(3)

    def __init__(self) -> None:
        self._state = self._SIZE
        self._left = 0  # chunk data still to come
        self._line = b""  # the start of a line cut by the end of a read
        self.done = False
        self.broken: Rejection | None = None

    @property
    def data_left(self) -> int:
        """The bytes of chunk data the lines read so far announce and have not come yet."""
        return self._left

    def feed(self, data: bytes) -> int:
        at = 0
        while at < len(data) and not self.done and self.broken is None:
            if self._left:
                taken = min(self._left, len(data) - at)
                at += taken
                self._left -= taken
                continue
            end = data.find(b"\n", at)
            line = self._line + data[at : None if end < 0 else end + 1]
            if len(line) > MAX_CHUNK_LINE_BYTES:
                self.broken = Rejection(400, f"a chunk line longer than {MAX_CHUNK_LINE_BYTES}")
                break
            if end < 0:
                self._line = line
                return len(data)
            self._line = b""
            at = end + 1
            self._line_ended(line)
        return at

    def _line_ended(self, line: bytes) -> None:
        if self._state == self._SIZE:
            size = check_chunk_line(line)
            if size is None:
                self.broken = MALFORMED_CHUNK_LINE
            elif size:
                self._left, self._state = size, self._DATA_END
            else:
                self._state = self._TRAILER
        elif self._state == self._DATA_END:
            if line == b"\r\n":
                self._state = self._SIZE
            else:
                self.broken = Rejection(400, "chunk data not ended by CRLF")
        elif line == b"\r\n":
            self.done = True
        elif not line.endswith(b"\r\n") or _FIELD_LINE.fullmatch(line[:-2]) is None:
            self.broken = Rejection(400, "a malformed trailer line")


def is_token(text: str) -> bool:
    """Whether `text` (a method, as another parser reports it) is an RFC 9110 token: an
    unknown method is 501, a malformed one 400."""
    return _TOKEN_ONLY.fullmatch(text.encode("latin-1", "replace")) is not None


def is_other_version(text: str) -> bool:
    """Whether `text` (another parser's error) names a well-formed HTTP version other than
    1.0 and 1.1 (505, where a malformed version is 400)."""
    found = _VERSION.search(text)
    return found is not None and found[1] not in SUPPORTED_VERSIONS


_TOKEN_ONLY = re.compile(_TOKEN)
_VERSION = re.compile(r"HTTP/(\d\.\d)(?![\w.])")
