"""The framing policy (servers/protocol/framing.py), without I/O: every corpus case gets its
status from the policy's own strict parser, and the decisions on parsed heads hold."""

from __future__ import annotations

import pytest
from http_corpus import ACCEPTED, CORPUS, Case

from servers.lifecycle import response_headers
from servers.protocol import framing
from servers.protocol.framing import Rejection, check_request, parse_head

# Cases the head parser cannot decide: they are about the body, after the head.
BODY_CASES = {case.name for case in CORPUS if case.name.startswith("chunk-")}


def verdict(case: Case) -> int:
    data = case.data[framing.empty_lines(case.data) :]
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        parsed = parse_head(head)
    except Rejection as rejection:
        return rejection.status
    if any(value.lower() == b"chunked" for name, value in parsed.headers):
        chunks = framing.ChunkedBody()
        chunks.feed(body)
        if chunks.broken is not None:
            return chunks.broken.status
        assert chunks.done
    return 200


@pytest.mark.parametrize("case", [c for c in CORPUS if c.name in BODY_CASES], ids=str)
def test_the_chunk_lines_of_each_corpus_case_get_its_status(case: Case) -> None:
    assert verdict(case) == case.status


@pytest.mark.parametrize(
    ("line", "size"),
    [
        (b"2\r\n", 2), (b"A\r\n", 10), (b"0" * 15 + b"a\r\n", 10), (b"0\r\n", 0),
        (b"2;a\r\n", 2), (b"2;a=b\r\n", 2), (b'2;a="b;c\\" d"\r\n', 2), (b'2;a=""\r\n', 2),
        (b"2;a=b;c\r\n", 2), (b"2;a=\xff\r\n", None), (b'2;a="\xff"\r\n', 2),
        (b"2;\r\n", None), (b"2; a\r\n", None), (b"2 ;a\r\n", None), (b"2 \r\n", None),
        (b"2\t\r\n", None), (b"2;a \r\n", None), (b"2;a = b\r\n", None), (b"2;=b\r\n", None),
        (b"2;;a\r\n", None), (b"2;a=\r\n", None), (b'2;a="b\r\n', None), (b"2;a(\r\n", None),
        (b"1" + b"0" * 16 + b"\r\n", None), (b"f" * 20 + b"\r\n", None), (b"\r\n", None),
        (b"2\n", None), (b"2\r\r\n", None), (b"+2\r\n", None), (b"0x2\r\n", None),
        (b" 2\r\n", None), (b"2;a=\x7f\r\n", None),
    ],
)  # fmt: skip
def test_a_chunk_line_is_read_strictly(line: bytes, size: int | None) -> None:
    assert framing.check_chunk_line(line) == size


def test_a_chunked_body_is_followed_through_any_split() -> None:
    wire = b"5;x=y\r\nhello\r\n10\r\n" + b"d" * 16 + b"\r\n0\r\nT: v\r\n\r\n"
    for cut in range(1, len(wire)):
        chunks = framing.ChunkedBody()
        taken = chunks.feed(wire[:cut])
        assert taken == cut and not chunks.done and chunks.broken is None
        assert chunks.feed(wire[cut:] + b"GET / HTTP/1.1") == len(wire) - cut
        assert chunks.done and chunks.broken is None
    broken = framing.ChunkedBody()
    broken.feed(b"5\r\nhello\r\n")
    broken.feed(b"2;\r\n")
    assert broken.broken is not None and broken.broken.status == 400
    long = framing.ChunkedBody()
    long.feed(b"5;" + b"a" * framing.MAX_CHUNK_LINE_BYTES)
    assert long.broken is not None


def test_empty_lines_are_crlf_only() -> None:
    assert framing.empty_lines(b"\r\n\r\nGET") == 4
    assert framing.empty_lines(b"\r\n\nGET") == 2
    assert framing.empty_lines(b"\rGET") == 0
    assert framing.empty_lines(b"GET") == 0


@pytest.mark.parametrize("case", [c for c in CORPUS if c.name not in BODY_CASES], ids=str)
def test_the_parser_refuses_each_corpus_case_with_its_status(case: Case) -> None:
    assert verdict(case) == case.status


@pytest.mark.parametrize("case", ACCEPTED, ids=str)
def test_the_parser_accepts_what_every_server_serves(case: Case) -> None:
    assert verdict(case) == 200


@pytest.mark.parametrize("case", [c for c in CORPUS if c.name not in BODY_CASES], ids=str)
def test_the_raw_verdict_agrees_with_the_parser(case: Case) -> None:
    """What the h11 servers say when h11 refuses first: the policy's status, not h11's."""
    rejection = framing.verdict_on_raw(case.data)
    assert rejection is not None and rejection.status == case.status


def test_parse_head_returns_the_framing() -> None:
    head = parse_head(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nX-A:  b  ")
    assert (head.method, head.target, head.version) == ("POST", "/echo", "1.1")
    assert head.content_length == 12
    assert (b"x-a", b"b") in head.headers  # names lower-cased, optional whitespace gone
    chunked = parse_head(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked")
    assert chunked.content_length is None


H = [(b"Host", b"a")]


@pytest.mark.parametrize(
    ("method", "version", "headers", "status"),
    [
        ("GET", "1.1", H, None),
        ("GET", "1.0", [], None),  # HTTP/1.0 needs no Host
        ("GET", "1.1", [], 400),
        ("GET", "2.0", H, 505),
        ("BREW", "1.1", H, 501),
        ("BREW", "2.0", H, 505),  # the version first, then the method
        ("BREW", "1.1", [], 501),  # the method before the fields
        ("POST", "1.1", [*H, (b"Content-Length", b"5")], None),
        ("POST", "1.1", [*H, (b"content-length", b"05")], None),
        ("POST", "1.1", [*H, (b"Content-Length", b"5"), (b"Content-Length", b"5")], 400),
        ("POST", "1.1", [*H, (b"Content-Length", b"%d" % (2**20 + 1))], 413),
        ("POST", "1.1", [*H, (b"Transfer-Encoding", b"chunked")], None),
        ("POST", "1.1", [*H, (b"TRANSFER-ENCODING", b"Chunked")], None),
        ("POST", "1.1", [*H, (b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"5")], 400),
        ("POST", "1.1", [*H, (b"Transfer-Encoding", b"gzip, chunked")], 501),
        ("POST", "1.1", [*H, (b"Transfer-Encoding", b"chunked, gzip")], 400),
        ("POST", "1.1", [*H, (b"Transfer-Encoding", b"chunked,")], 400),  # an empty member
        ("GET", "1.1", H + [(b"X-%d" % i, b"v") for i in range(99)], None),
        ("GET", "1.1", H + [(b"X-%d" % i, b"v") for i in range(100)], 431),
    ],
)
def test_check_request_decides(
    method: str, version: str, headers: list[tuple[bytes, bytes]], status: int | None
) -> None:
    rejection = check_request(method, version, headers)
    assert (rejection.status if rejection else None) == status


def test_refusals_are_the_contracts_json_and_close() -> None:
    response = Rejection(400, "x" * 500).response()
    assert response.status == 400 and response.close_connection
    assert response.body.startswith(b'{"error":"xxx') and len(response.body) < 250
    assert response_headers("gevent", response).count(("Connection", "close")) == 1


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n", 400),  # obs-fold, which h11 unfolds
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n", 400),  # DEL, which h11 admits
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 5\r\nCONTENT-LENGTH: 5\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-Content-Length: 5\r\n", None),
        (b"GET /" + b"a" * 8185 + b" HTTP/1.1\r\n", 414),
        (b"GET /" + b"a" * 8100 + b" HTTP/1.1\r\n", None),
    ],
)
def test_check_raw_head_catches_what_h11_lets_through(head: bytes, status: int | None) -> None:
    rejection = framing.check_raw_head(head)
    assert (rejection.status if rejection else None) == status


def test_other_parsers_errors_are_read_the_policys_way() -> None:
    assert framing.is_token("BREW") and framing.is_token("get") and not framing.is_token("G(T")
    assert framing.is_other_version("Bad status line: b'GET / HTTP/2.0'")
    assert not framing.is_other_version("Invalid minor version: b'GET / HTTP/1.x'")
    assert not framing.is_other_version("HTTP/1.1")


def test_accepted_heads_are_remembered_bounded() -> None:
    heads = framing.AcceptedHeads()
    heads.remember(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 27)
    assert b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" in heads
    heads.remember(b"x" * 5000, 5000)  # too large to keep
    assert b"x" * 5000 not in heads
    for index in range(heads.capacity + 10):
        heads.remember(b"head %d" % index, 10)
    assert len(heads) <= heads.capacity  # a client sending ever-new heads costs no memory
