"""The contract's routing and validation, without I/O: every server gets these answers from
the same function, so they are tested once, here, exhaustively."""

from __future__ import annotations

import json

import pytest

from servers import contract
from servers.contract import Blocking, Echo, Fanout, Metrics, Reply, Sleep, Stream


def body(plan: contract.Plan) -> dict:
    assert isinstance(plan, Reply)
    return json.loads(plan.response.body)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/sleep?ms=0", Sleep(0)),
        ("/sleep?ms=60000", Sleep(60000)),
        ("/fanout?n=1&ms=5", Fanout(1, 5)),
        ("/fanout?n=1000&ms=0", Fanout(1000, 0)),
        ("/blocking?ms=10", Blocking(10, True)),
        ("/blocking?ms=10&offload=0", Blocking(10, False)),
        ("/blocking?ms=10000&offload=1", Blocking(10000, True)),
        ("/blocking?ms=10&kind=c", Blocking(10, True, "c")),
        ("/stream?chunks=1&ms=0", Stream(1, 0)),
        ("/stream?chunks=1000&ms=3", Stream(1000, 3)),
        ("/metrics", Metrics()),
        ("/sleep?ms=5&ms=7", Sleep(5)),  # first occurrence wins
        ("/sleep?ms=5&unknown=x", Sleep(5)),  # unknown parameters are ignored
    ],
)
def test_valid_requests_plan_the_work(target: str, expected: contract.Plan) -> None:
    route, plan = contract.plan("GET", target)
    assert plan == expected
    assert route == target.partition("?")[0]


@pytest.mark.parametrize(
    "target",
    [
        "/sleep",
        "/sleep?ms=",
        "/sleep?ms=-1",
        "/sleep?ms=+1",
        "/sleep?ms=1.5",
        "/sleep?ms=%201",
        "/sleep?ms=1_0",
        "/sleep?ms=60001",
        "/sleep?ms=99999999999999999999999",
        "/sleep?ms=%D9%A3",  # an Arabic-Indic digit: str.isdigit() says yes, ASCII says no
        "/fanout?n=0&ms=1",
        "/fanout?n=1001&ms=1",
        "/fanout?n=5",
        "/cpu?n=1000001",
        "/cpu",
        "/blocking?ms=10001",
        "/blocking?ms=1&offload=2",
        "/blocking?ms=1&kind=go",
        "/stream?chunks=0&ms=1",
        "/stream?chunks=1001&ms=1",
        "/sleep?" + "&".join(f"p{i}=1" for i in range(60)),
    ],
)
def test_bad_parameters_are_400_with_a_reason(target: str) -> None:
    _, plan = contract.plan("GET", target)
    assert isinstance(plan, Reply)
    assert plan.response.status == 400
    assert plan.response.content_type == contract.JSON
    assert body(plan)["error"]


@pytest.mark.parametrize("target", ["/nope", "/json/", "//json", "/JSON", "", "*", "/sleep/1"])
def test_unknown_paths_are_404_labelled_other(target: str) -> None:
    route, plan = contract.plan("GET", target)
    assert route == contract.OTHER_ROUTE
    assert isinstance(plan, Reply) and plan.response.status == 404


@pytest.mark.parametrize(
    ("method", "target", "allow"),
    [("POST", "/json", "GET, HEAD"), ("DELETE", "/", "GET, HEAD"), ("GET", "/echo", "POST")],
)
def test_wrong_method_is_405_with_allow(method: str, target: str, allow: str) -> None:
    route, plan = contract.plan(method, target)
    assert route == target
    assert isinstance(plan, Reply) and plan.response.status == 405
    assert ("Allow", allow) in plan.response.headers


def test_head_is_planned_like_get() -> None:
    assert contract.plan("HEAD", "/sleep?ms=3") == contract.plan("GET", "/sleep?ms=3")


def test_fixed_bodies() -> None:
    assert contract.plan("GET", "/")[1] == Reply(
        contract.Response(200, b"Hello, World!", contract.TEXT)
    )
    assert contract.plan("GET", "/json")[1].response.body == b'{"message":"Hello, World!"}'
    assert contract.plan("GET", "/healthz")[1].response.body == b"ok"
    assert Sleep(7).response().body == b'{"slept_ms":7}'
    assert Fanout(3, 4).response().body == b'{"children":3,"slept_ms":4}'


def test_cpu_digest_is_chained_sha256() -> None:
    import hashlib

    expected = b"stackbench"
    for _ in range(3):
        expected = hashlib.sha256(expected).digest()
    assert contract.cpu_digest(3) == expected.hex()
    assert contract.cpu_digest(0) == b"stackbench".hex()
    assert body(contract.plan("GET", "/cpu?n=3")[1]) == {"rounds": 3, "digest": expected.hex()}


def test_echo_keeps_body_and_type() -> None:
    assert contract.plan("POST", "/echo")[1] == Echo()
    echoed = Echo.response(b"\x00\xffdata", "application/x-test")
    assert (echoed.status, echoed.body, echoed.content_type) == (
        200,
        b"\x00\xffdata",
        "application/x-test",
    )
    assert Echo.response(b"x", None).content_type == "application/octet-stream"
    assert Echo.too_large().status == 413 and Echo.too_large().close_connection


def test_labels_stay_bounded() -> None:
    assert contract.method_label("BREW") == "other"
    assert contract.method_label("GET") == "GET"
    assert {contract.route_label(p) for p in ("/a", "/b?x", "/sleep")} == {"other", "/sleep"}
