"""How much `stackbench run` measures: load levels, step length and repeats per profile."""

from __future__ import annotations

from dataclasses import dataclass, field

from loadtest.driver.scenarios import SCENARIOS

CORE_SCENARIOS = (
    "plaintext", "rate", "io_hold", "fanout", "starvation", "coloring", "c_boundary", "offload",
    "echo",
)  # fmt: skip


@dataclass(frozen=True)
class Profile:
    name: str
    step_seconds: float
    repeat: int
    # Closed-model users per step, per scenario (default: the scenario's own steps).
    levels: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # The open-model pass: `starvation` at a fixed arrival rate (streams x rate each).
    open_streams: int = 4
    open_rate_per_stream: float = 50.0
    # The scenarios run when none are named.
    scenarios: tuple[str, ...] = CORE_SCENARIOS
    # The rate sweep: which of the `rate` scenario's routes it sends, how many offered rates
    # common to every server (up to half the slowest server's capacity), and the fractions of
    # each server's own capacity it offers.
    rate_routes: tuple[str, ...] = ("/", "/json")
    rate_common: int = 4
    rate_fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1)

    def levels_for(self, scenario: str) -> tuple[int, ...]:
        return self.levels.get(scenario, SCENARIOS[scenario].user_steps)


PROFILES = {
    profile.name: profile
    for profile in (
        # For tests and a first look: seconds per step, two levels per scenario.
        Profile(
            "smoke",
            step_seconds=2.0,
            repeat=1,
            levels={
                # one user: below what saturates one Locust core (CPU per request)
                "plaintext": (1, 4, 32),
                "io_hold": (50, 100, 200),  # three points, so the fit can fail
                "fanout": (4, 16),
                "starvation": (2, 8),
                "coloring": (2, 8),
                "c_boundary": (2, 8),
                "offload": (2, 8),
                "echo": (4, 16),
                "mixed": (4, 16),
            },
            open_streams=2,
            open_rate_per_stream=40.0,
            rate_routes=("/",),
            rate_common=1,
            rate_fractions=(0.5,),
        ),
        # All servers and core scenarios in under 4 minutes on 2 cores.
        Profile(
            "quick",
            step_seconds=3.0,
            repeat=1,
            levels={
                "plaintext": (1, 8, 64),
                "io_hold": (250, 500, 1000),
                # One level where one is enough for CPU per request: the time goes to the
                # scenarios whose figures compare levels.
                "fanout": (16,),
                "starvation": (4, 16),
                # Their figures (/json p99 beside blocking calls, an inline call's p50) are
                # read at the busiest level: one is enough.
                "coloring": (16,),
                "c_boundary": (16,),
                "offload": (4,),  # its figure is read at the lightest level
                "echo": (4,),  # below what saturates one Locust core
                "mixed": (8, 32),
            },
            # The rate sweep replaces Locust's plaintext here (its ceiling is Locust's own).
            scenarios=tuple(s for s in CORE_SCENARIOS if s != "plaintext"),
            rate_routes=("/",),
            rate_common=2,
            rate_fractions=(0.5, 0.9, 1.1),
        ),
        Profile("standard", step_seconds=10.0, repeat=3, open_streams=6),
        Profile(
            "full",
            step_seconds=20.0,
            repeat=3,
            levels={"io_hold": (500, 1000, 2000, 5000, 10000)},
            open_streams=8,
        ),
    )
}
