"""The load scenarios, defined once: what each sends, and at which load levels.

A scenario is a weighted mix of requests from the HTTP contract. The Locust files under
`loadtest/locustfiles/` and `stackbench run` both read this table, so a scenario means the same
thing in the web UI, headless, and in the local comparison. Nothing here imports Locust.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # path and query, as sent
    weight: int = 1
    body: bytes | None = None
    content_type: str | None = None
    label: str | None = None  # client-side name, where one route is sent two ways

    @property
    def route(self) -> str:
        """The client's `route` label: the route template the servers use, unless `label`
        tells two kinds of request to the same route apart."""
        return self.label or self.target.partition("?")[0]


@dataclass(frozen=True)
class Scenario:
    name: str
    question: str  # what the scenario answers
    requests: tuple[Request, ...]
    # Closed model: concurrent users at each step (each sends back to back, no think time).
    user_steps: tuple[int, ...]
    # Open model: arrivals per second at each step, whether or not earlier requests returned.
    rate_steps: tuple[float, ...]
    # The headline figures a run of this scenario yields (named in loadtest/reporting/
    # figures.py), besides the CPU per request that every scenario yields.
    figures: tuple[str, ...] = ()
    # How long after a level starts its samples are left out: the ramp (the first sample at
    # least), and for long requests the first round, whose latency includes Locust spawning
    # the level's new users and their connections.
    settle_seconds: float = 0.0
    # Each new user waits a random part of this before its first request. Locust starts a
    # level's users in one batch a second; with long requests they would stay in step, and
    # their requests end (are answered, sent again) in bursts that queue in the server and the
    # driver. Staggered over one request's length, they arrive evenly.
    stagger_seconds: float = 0.0
    # A load level lasts at least this long, so that something is measured after settling.
    min_step_seconds: float = 0.0
    # Fit RSS against requests in flight across the levels (memory per in-flight request).
    fits_memory: bool = False
    # The servers call an upstream (`/upstream`): the run starts one and counts its connections.
    needs_upstream: bool = False
    # Who sends it in `stackbench run`: Locust (the users above), or the rate driver
    # (loadtest/rate/: capacity at user_steps connections, then an open-loop sweep).
    driver: str = "locust"

    def describe(self) -> list[str]:
        """What it sends, one line per kind of request: `weight x METHOD target`."""
        return [f"{r.weight} x {r.method} {r.target}" for r in self.requests]


_ECHO_BODY = b"x" * 4096
BLOCKING_MS = 20  # what the coloring scenario's blocking calls take
OFFLOADED = "/blocking offload=1"
INLINE = "/blocking offload=0"
C_OFFLOADED = "/blocking kind=c offload=1"
C_INLINE = "/blocking kind=c offload=0"
UPSTREAM_CALLS, UPSTREAM_MS = 4, 50  # what each /upstream request of the scenario asks for

SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario(
            "plaintext",
            "How many trivial requests per second can the server answer (its ceiling)?",
            (Request("GET", "/"),),
            user_steps=(1, 8, 32, 128),
            rate_steps=(500, 2000, 5000),
            figures=("ceiling_rps",),
        ),
        Scenario(
            "rate",
            "What can the server serve, and what does a request cost at equal offered load? "
            "The rate driver (not Locust, which is slower than most servers) measures the "
            "capacity closed-loop, then offers fixed rates open-loop, latency measured from "
            "each request's intended send.",
            (Request("GET", "/"), Request("GET", "/json")),
            # The run's rate driver: its connections. Under Locust (its Locust file, for the web
            # UI and the live view): users, and the open model's arrival rates, as plaintext's.
            # The run's sweep offers no fixed rate: fractions of each server's measured
            # capacity and rates common to all (the profile says which).
            user_steps=(64,),
            rate_steps=(500, 2000, 5000),
            figures=(
                "capacity_rps",
                "saturation_cpu_us",
                "common_cpu_us",
                "p99_at_50_ms",
                "p99_at_90_ms",
                "sustainable_rps",
            ),
            driver="rate",
        ),
        Scenario(
            "io_hold",
            "What does one in-flight request cost in memory? N requests wait 2 s at once.",
            (Request("GET", "/sleep?ms=2000"),),
            user_steps=(500, 1000, 2000, 5000),
            rate_steps=(250, 500, 1000, 2500),
            figures=(
                "bytes_per_request",
                "bytes_per_request_r2",
                "held_bytes_per_request",
                "held_bytes_per_request_r2",
            ),
            stagger_seconds=2.0,
            settle_seconds=3.0,
            min_step_seconds=5.0,
            fits_memory=True,
        ),
        Scenario(
            "fanout",
            "What does structured fan-out cost: each request waits on 20 child tasks.",
            (Request("GET", "/fanout?n=20&ms=20"),),
            user_steps=(8, 32, 128),
            rate_steps=(100, 400, 1000),
        ),
        Scenario(
            "starvation",
            "How much does CPU-bound work delay light requests that share its loop?",
            (Request("GET", "/cpu?n=20000", weight=1), Request("GET", "/json", weight=9)),
            user_steps=(4, 16, 64),
            rate_steps=(100, 300, 600),
            figures=(
                "starvation_lag_p99_ms",
                "starvation_probe_p99_ms",
                "fixed_load_rps",
                "fixed_load_p50_ms",
                "fixed_load_p99_ms",
                "fixed_load_p999_ms",
                "fixed_load_p99_uncorrected_ms",
            ),
        ),
        Scenario(
            "coloring",
            "What does calling a blocking library cost, offloaded to a thread and inline?",
            (
                Request("GET", f"/blocking?ms={BLOCKING_MS}&offload=1", weight=1, label=OFFLOADED),
                Request("GET", f"/blocking?ms={BLOCKING_MS}&offload=0", weight=1, label=INLINE),
                Request("GET", "/json", weight=8),
            ),
            user_steps=(4, 16, 64),
            rate_steps=(50, 150, 300),
            figures=("coloring_probe_p99_ms", "inline_p50_ms"),
        ),
        Scenario(
            "c_boundary",
            "Does a blocking call made in C (which monkey patching cannot see) stall the "
            "runtime, inline and offloaded?",
            (
                Request(
                    "GET",
                    f"/blocking?ms={BLOCKING_MS}&offload=1&kind=c",
                    weight=1,
                    label=C_OFFLOADED,
                ),
                Request(
                    "GET",
                    f"/blocking?ms={BLOCKING_MS}&offload=0&kind=c",
                    weight=1,
                    label=C_INLINE,
                ),
                Request("GET", "/json", weight=8),
            ),
            user_steps=(4, 16, 64),
            rate_steps=(50, 150, 300),
            figures=("c_boundary_probe_p99_ms", "c_inline_p50_ms"),
        ),
        Scenario(
            "offload",
            "What does pushing a blocking call to a thread cost, with nothing stalling the loop?",
            (
                Request("GET", f"/blocking?ms={BLOCKING_MS}&offload=1", weight=1, label=OFFLOADED),
                Request("GET", "/json", weight=4),
            ),
            user_steps=(4, 16, 64),
            rate_steps=(50, 150, 300),
            figures=("offload_overhead_ms",),
        ),
        Scenario(
            "upstream",
            "What does waiting on another service cost, through each world's own HTTP client "
            f"(urllib3 monkey-patched, aiohttp, httpx)? Each request makes {UPSTREAM_CALLS} "
            f"concurrent {UPSTREAM_MS} ms calls to an upstream server.",
            (Request("GET", f"/upstream?n={UPSTREAM_CALLS}&ms={UPSTREAM_MS}"),),
            # At most 8 x 4 = 32 calls in flight: inside the default pool of 100, so no call
            # waits for a connection; light enough for the driver's CPU, which the upstream
            # shares; and below what saturates the servers whose client is httpx (~0.6 ms of
            # CPU a call here, against ~0.15 for aiohttp's and ~0.3 for urllib3).
            user_steps=(2, 4, 8),
            rate_steps=(50, 100, 150),
            figures=(
                "upstream_p50_ms",
                "upstream_p99_ms",
                "upstream_bytes_per_request",
                "upstream_bytes_per_request_r2",
                "upstream_connections",
            ),
            # CPU per request is known to two 10 ms ticks over the step plus the idle probe's
            # two ticks a second over the step, per request: ~0.02 s / rate, ~140-200 µs at
            # 100-150 requests a second whatever the step's length; longer steps shrink the
            # first part (at 3 s steps aiohttp's ~800 µs would be near the 25 % cut-off).
            min_step_seconds=6.0,
            fits_memory=True,
            needs_upstream=True,
        ),
        Scenario(
            "echo",
            "How fast is reading and writing a 4 KiB body?",
            (Request("POST", "/echo", body=_ECHO_BODY, content_type="application/octet-stream"),),
            user_steps=(8, 32, 128),
            rate_steps=(500, 2000, 4000),
        ),
        Scenario(
            "mixed",
            "A bit of everything: the live demo.",
            (
                Request("GET", "/", weight=4),
                Request("GET", "/json", weight=4),
                Request("GET", "/sleep?ms=50", weight=3),
                Request("GET", "/fanout?n=10&ms=20", weight=2),
                Request("GET", "/cpu?n=2000", weight=1),
                Request("GET", "/blocking?ms=10&offload=1", weight=1),
                Request(
                    "POST",
                    "/echo",
                    weight=2,
                    body=b"y" * 1024,
                    content_type="application/octet-stream",
                ),
                Request("GET", "/stream?chunks=5&ms=10", weight=1),
            ),
            user_steps=(8, 32, 64),
            rate_steps=(200, 600, 1200),
        ),
    )
}


def get_scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        known = ", ".join(SCENARIOS)
        raise ValueError(f"unknown scenario {name!r}; known scenarios: {known}") from None
