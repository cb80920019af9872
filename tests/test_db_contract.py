"""The database routes' side of the contract, without I/O: the parameter rules, the seeded
row choice, the bodies (servers/db/rows.py, servers/contract.py)."""

from __future__ import annotations

import json
from itertools import islice

import pytest

from servers import contract
from servers.contract import Database, Reply
from servers.db import rows


@pytest.mark.parametrize(
    ("raw", "count"),
    [(None, 1), ("", 1), ("foo", 1), ("0", 1), ("-5", 1), ("+5", 1), ("1.5", 1), ("٣", 1),
     ("1", 1), ("7", 7), ("500", 500), ("501", 500), ("0007", 7), ("0001", 1),
     ("99999999999999999999", 500)],
)  # fmt: skip
def test_queries_count_is_techempowers_rule(raw: str | None, count: int) -> None:
    assert rows.queries_count(raw) == count


def test_the_seeded_stream_is_splitmix64() -> None:
    # splitmix64's published first output from state 0 (the reference implementation's).
    assert next(rows.seeded(0)) == 1 + 0xE220A8397B1DCDAF % rows.WORLD_ROWS
    assert list(islice(rows.seeded(42), 5)) == list(islice(rows.seeded(42), 5))
    assert all(1 <= row <= rows.WORLD_ROWS for row in islice(rows.seeded(7), 10_000))


def test_seeded_plans_are_fixed_and_unseeded_ones_vary() -> None:
    first = contract.plan("GET", "/queries?queries=20&seed=9")[1]
    assert first == contract.plan("GET", "/queries?queries=20&seed=9")[1]
    assert isinstance(first, Database) and len(first.ids) == 20 and first.many
    unseeded = {contract.plan("GET", "/queries?queries=20")[1].ids for _ in range(5)}
    assert len(unseeded) > 1
    assert contract.plan("GET", "/db?id=77")[1] == Database("world", (77,))


def test_updates_give_a_repeated_id_one_number_and_sort_the_batch() -> None:
    ids = (5, 3, 5, 9, 3)
    numbers = rows.update_numbers(ids, seed=1)
    assert numbers[0] == numbers[2] and numbers[1] == numbers[4]
    assert rows.update_batch(ids, numbers) == ([3, 5, 9], [numbers[1], numbers[0], numbers[3]])
    plan = contract.plan("GET", "/updates?queries=3&seed=4")[1]
    assert isinstance(plan, Database) and plan.query == "updates"
    body = json.loads(plan.response(None).body)
    assert body == [
        {"id": i, "randomNumber": n} for i, n in zip(plan.ids, plan.numbers, strict=True)
    ]


def test_bodies() -> None:
    assert Database("world", (1,)).response([(1, 7920)]).body == b'{"id":1,"randomNumber":7920}'
    many = Database("world", (1, 2), many=True).response([(1, 3), (2, 4)])
    assert many.body == b'[{"id":1,"randomNumber":3},{"id":2,"randomNumber":4}]'
    assert Database("sleep", ms=12).response(None).body == b'{"db_slept_ms":12}'


def test_the_escape_table_and_the_page() -> None:
    assert rows.escape_html("&<>\"'é/") == "&amp;&lt;&gt;&quot;&#39;é/"
    page = Database("fortunes").response([(2, "b <i>"), (1, "a & 'q'"), (3, "é")])
    assert page.content_type == "text/html; charset=utf-8"
    assert page.body.decode() == (
        "<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table>"
        "<tr><th>id</th><th>message</th></tr>"
        "<tr><td>0</td><td>Additional fortune added at request time.</td></tr>"
        "<tr><td>1</td><td>a &amp; &#39;q&#39;</td></tr>"
        "<tr><td>2</td><td>b &lt;i&gt;</td></tr>"
        "<tr><td>3</td><td>é</td></tr>"
        "</table></body></html>"
    )


@pytest.mark.parametrize(
    "target", ["/db?id=0", "/db?id=10001", "/db?id=", "/dbsleep", "/dbsleep?ms=10001",
               "/queries?seed=x"],
)  # fmt: skip
def test_bad_parameters_are_400(target: str) -> None:
    _, plan = contract.plan("GET", target)
    assert isinstance(plan, Reply) and plan.response.status == 400


def test_routes_are_in_the_table() -> None:
    for route in ("/db", "/queries", "/fortunes", "/updates", "/dbsleep"):
        assert contract.ROUTE_METHODS[route] == ("GET", "HEAD")
        assert contract.plan("POST", route)[1].response.status == 405
