"""What the database routes answer, free of I/O and of the contract's other types: which rows a
request reads (at random, or fixed by ?id= and ?seed= so that every server answers the same
bytes), and the bodies made of them, TechEmpower's shapes: a World row as
`{"id":N,"randomNumber":M}`, the Fortunes page as their HTML with one escape table.

The native servers port this file (servers/native/go/db.go, servers/native/rust/src/db.rs):
the seeded choice is splitmix64, which every language computes alike in unsigned 64-bit
arithmetic."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence

__all__ = [
    "ADDED_FORTUNE",
    "FORTUNES_CONTENT_TYPE",
    "MAX_QUERIES",
    "WORLD_ROWS",
    "escape_html",
    "fortunes_page",
    "queries_count",
    "random_ids",
    "seeded",
    "update_batch",
    "update_numbers",
    "world",
    "worlds",
]

WORLD_ROWS = 10_000  # ids 1..10000, randomNumber 1..10000
MAX_QUERIES = 500
ADDED_FORTUNE = (0, "Additional fortune added at request time.")
FORTUNES_CONTENT_TYPE = "text/html; charset=utf-8"

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_random = random.Random()


def queries_count(raw: str | None) -> int:
    """TechEmpower's rule for ?queries=: missing, not an integer or below 1 means 1, above 500
    means 500 (the one parameter the contract clamps rather than refusing with 400)."""
    if raw is None or not raw.isascii() or not raw.isdigit():
        return 1  # "-5" and "+5" are not digits: "below 1" and "not an integer" alike
    digits = raw.lstrip("0")
    if len(digits) > 3:  # no int() of a long string: it only has to be above 500
        return MAX_QUERIES
    return min(max(int(digits or "0"), 1), MAX_QUERIES)


def seeded(seed: int) -> Iterator[int]:
    """splitmix64 from `seed`: an endless stream of numbers 1..WORLD_ROWS."""
    state = seed & _MASK
    while True:
        state = (state + _GOLDEN) & _MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        z ^= z >> 31
        yield 1 + z % WORLD_ROWS


def random_ids(count: int, seed: int | None) -> tuple[int, ...]:
    """`count` ids 1..WORLD_ROWS (repeats allowed, as TechEmpower's): the first `count` of
    seeded(seed), or at random without a seed."""
    if seed is None:
        return tuple(_random.randint(1, WORLD_ROWS) for _ in range(count))
    stream = seeded(seed)
    return tuple(next(stream) for _ in range(count))


def update_numbers(ids: Sequence[int], seed: int | None) -> tuple[int, ...]:
    """The new randomNumber of each of `ids`: a repeated id gets the number of its first
    occurrence, so that what /updates answers is what the table then holds. With a seed, the
    numbers are seeded(seed)'s draws after the ids."""
    if seed is None:
        fresh = (_random.randint(1, WORLD_ROWS) for _ in ids)
    else:
        stream = seeded(seed)
        for _ in ids:
            next(stream)
        fresh = (next(stream) for _ in ids)
    chosen: dict[int, int] = {}
    return tuple(chosen.setdefault(row, number) for row, number in zip(ids, fresh, strict=True))


def update_batch(ids: Sequence[int], numbers: Sequence[int]) -> tuple[list[int], list[int]]:
    """The rows one batched UPDATE writes: each id once, sorted (as TechEmpower's entries sort
    them, so that two concurrent batches lock rows in the same order and cannot deadlock)."""
    batch = dict(zip(ids, numbers, strict=True))
    ordered = sorted(batch)
    return ordered, [batch[row] for row in ordered]


def world(row: int, number: int) -> bytes:
    return b'{"id":%d,"randomNumber":%d}' % (row, number)


def worlds(rows: Iterable[tuple[int, int]]) -> bytes:
    return b"[" + b",".join(world(row, number) for row, number in rows) + b"]"


# The one escape table of /fortunes, on every server: & < > " ' and nothing else.
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})

_PAGE_HEAD = (
    "<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table>"
    "<tr><th>id</th><th>message</th></tr>"
)
_PAGE_TAIL = "</table></body></html>"


def escape_html(text: str) -> str:
    return text.translate(_ESCAPES)


def fortunes_page(rows: Iterable[tuple[int, str]]) -> bytes:
    """TechEmpower's Fortunes page: the rows plus ADDED_FORTUNE, sorted by message (by code
    point, which is UTF-8 byte order, so Go's and Rust's string sorts agree), escaped, UTF-8."""
    fortunes = sorted([*rows, ADDED_FORTUNE], key=lambda fortune: fortune[1])
    body = "".join(
        f"<tr><td>{row}</td><td>{escape_html(message)}</td></tr>" for row, message in fortunes
    )
    return (_PAGE_HEAD + body + _PAGE_TAIL).encode()
