"""The verdict: the claims of the stackful-vs-stackless debate (Go's goroutines against Rust's
futures), each read off this run's headline figures, free of I/O.

Every sentence is written from the figures: which server measured what, in which order, by how
much, and whether the run decides. The rule (ONE_RUN_RULE): a claim holds when every server of
the kind it names as higher lies above every server of the other kind with their 95 % intervals
(from within the run: intervals.py) apart; it does not hold when they are apart the other way;
with repeats, the repeats' min-max ranges must be apart too. The same code with two
servers' figures swapped says the opposite (tests/test_verdict.py checks that). Where the run
could not measure a claim (its scenario not run, the figure driver-bound, a single repeat), the
row says so and what to run instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import parse_qs

from loadtest.driver.scenarios import SCENARIOS
from loadtest.records import Figure, ServerHeadline
from loadtest.reporting.formatting import number
from servers.contract import IMPLS, RUNTIMES

__all__ = ["ALSO", "CLAIMS", "C_BOUNDARY", "Claim", "Row", "verdict"]

# Stackful: each task has its own stack (greenlets; OS threads; goroutines). Stackless: a
# coroutine object per task, resumed by an event loop (trio, asyncio; Rust's futures on tokio).
STACKFUL_RUNTIMES = frozenset({"gevent", "threads", "go"})
# Go preempts a busy goroutine (asynchronously, since Go 1.14), as the OS preempts a thread.
PREEMPTIVE_RUNTIMES = frozenset({"threads", "go"})
# The native archetypes stand beside the Python worlds, not in their groups: a claim is about the
# model, and Go or Rust against Python would measure the language. Each Python runtime's
# archetype: gevent's model is Go's; asyncio's and trio's is Rust's futures on tokio.
NATIVE_RUNTIMES = frozenset({"go", "tokio"})
ARCHETYPES = {"gevent": "go", "asyncio": "tokio", "trio": "tokio"}
GO_MIN_STACK_KIB = 2  # Go's smallest goroutine stack: the debate's reference
PER_CHILD = "fanout:per_child"
ONE_RUN_RULE = (
    "A claim holds when every server of the kind it names as higher measured above every "
    "server of the other kind with their 95 % intervals (from within the run, calibrated "
    "against repeats) apart, and does "
    "not hold when they are apart the other way; with repeats, the repeats' ranges must not "
    "overlap either."
)
ONE_RUN = "(one run: how much it varies between runs is not known; --repeat 3 tests it)"
# The two memory methods (held connections, and RSS under Locust) disagreeing by more than this
# leave the memory claim undecided: one of them measures something else.
MEMORY_METHODS_AGREE = 0.15


@dataclass(frozen=True)
class Claim:
    key: str
    claim: str
    figure: str  # a headline figure's name, "cpu:<scenario>", or PER_CHILD
    unit: str
    scale: float
    scenario: str  # the scenario that measures it (what to run when it is missing)
    # Who the claim says comes out higher, as a predicate on a server's name.
    higher: Callable[[str], bool]
    higher_name: str
    lower_name: str


def _stackful(server: str) -> bool:
    return RUNTIMES.get(server) in STACKFUL_RUNTIMES


def _cooperative(server: str) -> bool:
    return RUNTIMES.get(server) not in PREEMPTIVE_RUNTIMES


def _explicit_await(server: str) -> bool:
    return RUNTIMES.get(server) in ("trio", "asyncio", "tokio")


def _native(server: str) -> bool:
    return RUNTIMES.get(server) in NATIVE_RUNTIMES


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "memory", "A stackful task costs more memory (a goroutine: at least 2 KiB of stack)",
        "held_bytes_per_request", "KiB", 1 / 1024, "io_hold", _stackful, "stackful", "stackless",
    ),
    Claim(
        "cpu", "Stackless extracts more performance from the machine (CPU per request at the "
        "highest offered rate common to every server, the rate sweep)",
        "common_cpu_us", "µs", 1, "rate", _stackful, "stackful", "stackless",
    ),
    Claim(
        "colouring", "Synchronous libraries do not mix with async code (coloured functions)",
        "coloring_probe_p99_ms", "ms", 1, "coloring", _explicit_await, "explicit-await",
        "implicit-yield",
    ),
    Claim(
        "fanout", "A stackful task costs more to start (CPU per child of a structured fan-out)",
        "fanout:per_child", "µs", 1, "plaintext,fanout", _stackful, "stackful", "stackless",
    ),
    Claim(
        "clients", "Waiting on another service costs the coloured world more (it needs "
        "clients of its own: CPU per /upstream request)",
        "cpu:upstream", "µs", 1, "upstream", _explicit_await, "explicit-await",
        "implicit-yield",
    ),
    Claim(
        "starvation", "One busy task starves the others (cooperative scheduling)",
        "starvation_probe_p99_ms", "ms", 1, "starvation", _cooperative, "cooperative",
        "preemptive",
    ),
)  # fmt: skip
C_BOUNDARY = Claim(
    "c_boundary", "Calling into C is where the stackful model pays (Go's cgo)",
    "c_boundary_probe_p99_ms", "ms", 1, "c_boundary", _stackful, "stackful", "stackless",
)  # fmt: skip
COLOURING = next(claim for claim in CLAIMS if claim.key == "colouring")


@dataclass(frozen=True)
class Row:
    claim: str
    figures: dict[str, str]  # server -> the figure as printed (median, spread)
    reading: str  # one sentence from the figures
    decided: bool  # whether the run's spread decides the claim


def _fanout_children() -> int:
    target = SCENARIOS["fanout"].requests[0].target
    return int(parse_qs(target.partition("?")[2])["n"][0])


def _per_child(headline: ServerHeadline) -> Figure | None:
    """CPU per child task of a fan-out: the fanout request's CPU less a plaintext request's,
    over its children; the range from the two figures' extremes."""
    fanout = headline.cpu_us_per_request.get("fanout")
    plain = headline.cpu_us_per_request.get("plaintext")
    if fanout is None or plain is None:
        return None
    children = _fanout_children()
    low, high = (fanout.min - plain.max) / children, (fanout.max - plain.min) / children
    median = (fanout.median - plain.median) / children
    ci_low = ci_high = None
    if None not in (fanout.low, fanout.high, plain.low, plain.high):
        ci_low = (fanout.low - plain.high) / children  # type: ignore[operator]
        ci_high = (fanout.high - plain.low) / children  # type: ignore[operator]
    return Figure(
        median=median, min=min(low, median), max=max(high, median), n=min(fanout.n, plain.n),
        values=[median], driver_bound=fanout.driver_bound or plain.driver_bound,
        low=ci_low, high=ci_high,
    )  # fmt: skip


def _figure(headline: ServerHeadline, name: str) -> Figure | None:
    if name == PER_CHILD:
        return _per_child(headline)
    if name.startswith("cpu:"):
        return headline.cpu_us_per_request.get(name.removeprefix("cpu:"))
    return headline.figures.get(name)


def _shown(figure: Figure, claim: Claim) -> str:
    error = figure.error * claim.scale if figure.error else None
    text = f"{number(figure.median * claim.scale, error)} {claim.unit}"
    if figure.low is not None and figure.high is not None:
        half = max(figure.high - figure.median, figure.median - figure.low) * claim.scale
        text += f" ± {number(half, significant=2)}"
    if figure.n > 1:
        low, high = (number(v * claim.scale, error) for v in (figure.min, figure.max))
        text += f" ({low}-{high}, n={figure.n})"
    return text


def _value(figure: Figure, claim: Claim) -> str:
    error = figure.error * claim.scale if figure.error else None
    return f"{number(figure.median * claim.scale, error)} {claim.unit}"


# Figures that complete a claim's reading without deciding it: claim key -> (figure name,
# the words before the list, its unit, the words after it, highest first).
ALSO = {
    "cpu": ("capacity_rps", "Capacity measured (closed loop, one core):", "req/s", "", True),
    "colouring": (
        "offload_overhead_ms", "Offloading the call to a thread costs", "ms", "per call", False,
    ),
    "starvation": (
        "starvation_lag_p99_ms", "Scheduler lag p99 meanwhile:", "ms", "", False,
    ),
    "clients": ("upstream_p99_ms", "/upstream p99 (four 50 ms calls):", "ms", "", False),
}  # fmt: skip


# Runtimes where /blocking?offload=1 offloads nothing (Go: the same direct call as offload=0).
NO_OFFLOAD_RUNTIMES = frozenset({"go"})


def _also(claim: Claim, headline: dict[str, ServerHeadline]) -> str:
    if claim.key not in ALSO:
        return ""
    name, lead, unit, tail, highest_first = ALSO[claim.key]
    measured = {
        server: figure
        for server, figures in headline.items()
        if (figure := figures.figures.get(name)) is not None
        and not (name == "offload_overhead_ms" and RUNTIMES.get(server) in NO_OFFLOAD_RUNTIMES)
    }
    # In the order of the figures, as every sentence here is: swapping two servers' figures
    # swaps their names.
    ranked = sorted(measured, key=lambda server: (measured[server].median, server))
    if highest_first:
        ranked.reverse()
    parts = []
    for server in ranked:
        figure = measured[server]
        bound = " (driver-bound: at least)" if figure.driver_bound else ""
        parts.append(f"{server} {number(figure.median, significant=2 if unit == 'req/s' else 3)}"
                     f" {unit}{bound}")  # fmt: skip
    return f" {lead} {', '.join(parts)}{' ' + tail if tail else ''}." if parts else ""


def _row(claim: Claim, headline: dict[str, ServerHeadline]) -> Row:
    """The claim decided between the Python servers (the natives are read beside: _beside)."""
    measured = {
        server: figure
        for server, figures in headline.items()
        if (figure := _figure(figures, claim.figure)) is not None
    }
    shown = {server: _shown(figure, claim) for server, figure in measured.items()}
    natives_measured = any(_native(server) for server in measured)
    measured = {server: figure for server, figure in measured.items() if not _native(server)}
    if len(measured) < 2 and natives_measured:
        return Row(
            claim.claim, shown,
            f"Not decided between the Python servers: this run measured {len(measured)} (add "
            "some, e.g. --servers gevent,aiohttp beside the native ones).",
            False,
        )  # fmt: skip
    if len(measured) < 2:
        return Row(
            claim.claim, shown,
            f"Not measured by this run: it needs {claim.scenario.replace(',', ' and ')} "
            f"(stackbench run --scenarios {claim.scenario}) with at least two servers.",
            False,
        )  # fmt: skip
    higher = {s: f for s, f in measured.items() if claim.higher(s)}
    lower = {s: f for s, f in measured.items() if not claim.higher(s)}
    ranked = sorted(measured, key=lambda s: measured[s].median)
    least, most = ranked[0], ranked[-1]
    # A ratio only between positive figures (CPU per child, a difference, can come out <= 0).
    ratio = measured[most].median / measured[least].median if measured[least].median > 0 else None
    among = "Among the Python servers, " if natives_measured else ""
    order = (
        f"{among}{most} measured the most, {_value(measured[most], claim)}"
        + (
            f", {number(ratio, significant=2)}x {least}'s {_value(measured[least], claim)}"
            if ratio
            else ""
        )
        + "."
    )
    if claim.key == "memory":
        order += (
            f" A goroutine's stack starts at {GO_MIN_STACK_KIB} KiB (an idle task alone, "
            "without a server: stackbench tasks)."
        )
    if not higher or not lower:
        missing = claim.lower_name if higher else claim.higher_name
        candidates = [s for s in IMPLS if claim.higher(s) != bool(higher) and not _native(s)]
        return Row(
            claim.claim, shown,
            f"{order} Not decided: this run has no {missing} server to compare with (add "
            f"one of {', '.join(candidates)}).",
            False,
        )  # fmt: skip
    if any(f.driver_bound for f in measured.values()):
        return Row(claim.claim, shown, f"{order} Not decided: a figure is driver-bound.", False)
    if claim.key == "memory" and (disagree := _methods_disagree(headline, measured)):
        return Row(claim.claim, shown, f"{order} Not decided: {disagree}.", False)
    groups = f"{claim.higher_name} ({', '.join(sorted(higher))})"
    others = f"{claim.lower_name} ({', '.join(sorted(lower))})"
    decision = decide(higher, lower)
    repeats = min(f.n for f in measured.values()) >= 2
    if decision in ("holds", "fails") and repeats:
        ranges = _ranges_apart(higher, lower)
        if ranges != decision:
            return Row(
                claim.claim, shown,
                f"{order} Not decided: the intervals are apart, but the {groups} and {others} "
                "repeats' ranges overlap.", False,
            )  # fmt: skip
    where = "Holds here" if repeats else "Holds in this run"
    where_not = "Does not hold here" if repeats else "Does not hold in this run"
    tail = "" if repeats else f" {ONE_RUN}"
    if decision == "holds":
        verdict = (
            f"{where}: every {groups} server measured more than every {others} one, their 95 % "
            f"intervals apart{tail}."
        )
    elif decision == "fails":
        verdict = (
            f"{where_not}: every {groups} server measured less than every {others} one, their "
            f"95 % intervals apart{tail}."
        )
    else:
        return Row(claim.claim, shown, f"{order} Not decided: {decision}.", False)
    return Row(claim.claim, shown, f"{order} {verdict}", True)


def decide(higher: dict[str, Figure], lower: dict[str, Figure]) -> str:
    """ "holds" when every `higher` figure's interval lies above every `lower` one's, "fails"
    when below; else why not (intervals overlap, or a figure has none)."""
    figures = {**higher, **lower}
    missing = sorted(s for s, f in figures.items() if f.low is None or f.high is None)
    if missing:
        return f"no 95 % interval for {', '.join(missing)}"
    if min(f.low for f in higher.values()) > max(f.high for f in lower.values()):  # type: ignore[type-var]
        return "holds"
    if max(f.high for f in higher.values()) < min(f.low for f in lower.values()):  # type: ignore[type-var]
        return "fails"
    return "the 95 % intervals overlap"


def _ranges_apart(higher: dict[str, Figure], lower: dict[str, Figure]) -> str:
    if min(f.min for f in higher.values()) > max(f.max for f in lower.values()):
        return "holds"
    if max(f.max for f in higher.values()) < min(f.min for f in lower.values()):
        return "fails"
    return "overlap"


def _methods_disagree(
    headline: dict[str, ServerHeadline], measured: dict[str, Figure]
) -> str | None:
    """Where the held-connection figure and the one under Locust differ by more than
    MEMORY_METHODS_AGREE for a server: one of them measures something else there."""
    gaps = []
    for server, held in sorted(measured.items()):
        locust = headline[server].figures.get("bytes_per_request")
        if locust is not None and held.median > 0:
            gap = abs(locust.median - held.median) / held.median
            if gap > MEMORY_METHODS_AGREE:
                gaps.append(f"{server} {gap:.0%}")
    if not gaps:
        return None
    return (
        f"the two memory methods (held connections, RSS under Locust) disagree by more than "
        f"{MEMORY_METHODS_AGREE:.0%}: {', '.join(gaps)}"
    )


def _beside(claim: Claim, headline: dict[str, ServerHeadline]) -> str:
    """The native archetypes' reading of a claim: how they rank between themselves, and how far
    each Python server is from the archetype of its model (gevent from Go, asyncio and trio
    from Rust on tokio), as a ratio of medians."""
    measured = {
        server: figure
        for server, figures in headline.items()
        if (figure := _figure(figures, claim.figure)) is not None
    }
    native = {server: figure for server, figure in measured.items() if _native(server)}
    if not native:
        return ""
    ranked = sorted(native, key=lambda server: (native[server].median, server))
    text = " Natively: " + ", ".join(f"{s} {_value(native[s], claim)}" for s in ranked)
    higher = [s for s in native if claim.higher(s)]
    lower = [s for s in native if not claim.higher(s)]
    if higher and lower:
        high, low = native[higher[0]], native[lower[0]]
        decision = decide({higher[0]: high}, {lower[0]: low})
        if min(high.n, low.n) >= 2 and _ranges_apart({"a": high}, {"b": low}) != decision:
            decision = "the repeats' ranges overlap"
        if high.driver_bound or low.driver_bound:
            holds = "more" if high.median > low.median else "less"
            text += (
                f" (the {claim.higher_name} one measured {holds} at the medians; a driver-bound "
                "figure does not decide)"
            )
        elif decision == "holds":
            text += f" (holds between them: the {claim.higher_name} one measured more)"
        elif decision == "fails":
            text += f" (does not hold between them: the {claim.higher_name} one measured less)"
        else:
            text += f" (not decided between them: {decision})"
    distances = []
    for server in sorted(measured):
        archetype = ARCHETYPES.get(RUNTIMES.get(server, ""))
        for other in sorted(native):
            # A ratio only between positive figures (CPU per child can come out <= 0).
            if RUNTIMES[other] == archetype and native[other].median > 0 < measured[server].median:
                ratio = measured[server].median / native[other].median
                distances.append(f"{server} {number(ratio, significant=2)}x {other}")
    if distances:
        text += ". Beside its archetype: " + ", ".join(distances)
    return text + "."


def _c_boundary_row(headline: dict[str, ServerHeadline]) -> Row:
    """gevent's colouring advantage stops at C: beside blocking calls made in C, where monkey
    patching cannot reach, its light requests wait as an event loop's do. Read per gevent
    server, as its /json p99 beside C calls against beside Python calls."""
    claim = C_BOUNDARY
    shown = {
        server: _shown(figure, claim)
        for server, figures in headline.items()
        if (figure := _figure(figures, claim.figure)) is not None
    }
    pairs = {
        server: (python, c)
        for server, figures in headline.items()
        if RUNTIMES.get(server) == "gevent"
        and (python := _figure(figures, COLOURING.figure)) is not None
        and (c := _figure(figures, claim.figure)) is not None
    }
    if not pairs:
        return Row(
            claim.claim, shown,
            "Not measured by this run: add the coloring and c_boundary scenarios with a gevent "
            "server (stackbench run --scenarios coloring,c_boundary).",
            False,
        )  # fmt: skip
    parts: list[str] = []
    holds: list[str] = []
    fails: list[str] = []
    reasons: list[str] = []
    for server, (python, c) in sorted(pairs.items()):
        ratio = c.median / python.median if python.median else float("inf")
        times = number(ratio, significant=2)
        parts.append(
            f"{server}'s /json p99 is {_value(c, claim)} beside blocking calls in C against "
            f"{_value(python, claim)} beside the same calls in Python ({times}x)"
        )
        if python.driver_bound or c.driver_bound:
            continue
        decision = decide({server: c}, {server: python})
        if min(python.n, c.n) >= 2 and _ranges_apart({server: c}, {server: python}) != decision:
            decision = "the repeats' ranges overlap"
        (holds if decision == "holds" else fails if decision == "fails" else []).append(server)
        reasons.append(decision)
    text = "; ".join(parts) + "."
    repeats = all(min(python.n, c.n) >= 2 for python, c in pairs.values())
    tail = "" if repeats else f" {ONE_RUN}"
    where = "here" if repeats else "in this run"
    if holds and len(holds) == len(pairs):
        return Row(
            claim.claim, shown,
            f"{text} Holds {where}: C stalls the hub, the 95 % intervals apart{tail}.", True,
        )  # fmt: skip
    if fails and len(fails) == len(pairs):
        return Row(claim.claim, shown, f"{text} Does not hold {where}{tail}.", True)
    why = (
        next((r for r in reasons if r not in ("holds", "fails")), "the servers disagree")
        if reasons
        else "a figure is driver-bound"
    )
    return Row(claim.claim, shown, f"{text} Not decided: {why}.", False)


def _native_c_boundary(headline: dict[str, ServerHeadline]) -> str:
    """The archetypes at the C boundary: each native server's /json p99 beside blocking calls
    made through its FFI (Go's cgo, Rust's extern "C") against beside its own blocking calls."""
    parts = []
    for server, figures in sorted(headline.items()):
        if not _native(server):
            continue
        own, c = _figure(figures, COLOURING.figure), _figure(figures, C_BOUNDARY.figure)
        if c is None:
            continue
        if own is None:  # the coloring scenario not run: the C figure alone
            parts.append(f"{server} {_value(c, C_BOUNDARY)} beside C calls")
            continue
        ratio = f" ({number(c.median / own.median, significant=2)}x)" if own.median > 0 else ""
        parts.append(
            f"{server} {_value(c, C_BOUNDARY)} beside C calls against {_value(own, C_BOUNDARY)} "
            f"beside its own language's blocking calls{ratio}"
        )
    return f" Natively, /json p99: {'; '.join(parts)}." if parts else ""


def verdict(headline: dict[str, ServerHeadline]) -> list[Row]:
    """One row per claim, in the order of CLAIMS, then the C boundary's."""
    rows = [
        replace(row, reading=row.reading + _also(claim, headline) + _beside(claim, headline))
        for claim, row in zip(CLAIMS, (_row(claim, headline) for claim in CLAIMS), strict=True)
    ]
    boundary = _c_boundary_row(headline)
    return [*rows, replace(boundary, reading=boundary.reading + _native_c_boundary(headline))]
