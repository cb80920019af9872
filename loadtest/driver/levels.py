"""The load levels of the step shape (STACKBENCH_SHAPE=steps), decided without I/O or Locust."""

from __future__ import annotations

from loadtest.driver.scenarios import Scenario
from loadtest.driver.settings import DriverSettings

__all__ = ["cap_levels", "step_levels"]


def step_levels(scenario: Scenario, config: DriverSettings) -> tuple[int, ...]:
    """Users per step: STACKBENCH_LEVELS, else the scenario's own. In the open model each user
    is one arrival stream, so the scenario's rate steps become stream counts at
    STACKBENCH_RATE each."""
    if config.levels:
        return config.levels
    if config.model == "open":
        return tuple(max(1, round(rate / config.rate)) for rate in scenario.rate_steps)
    return scenario.user_steps


def cap_levels(levels: tuple[int, ...], users: int | None) -> tuple[tuple[int, ...], str | None]:
    """The levels a step test runs under Locust's user count (`-u`, or the web UI's), and a
    sentence saying what was dropped (None when nothing was). With every level above the cap,
    the cap itself is the one level."""
    if users is None or users < 1:
        return levels, None
    kept = tuple(level for level in levels if level <= users) or (users,)
    dropped = [level for level in levels if level > users]
    if not dropped:
        return kept, None
    return kept, (
        f"{users} users at most: step levels {', '.join(map(str, dropped))} dropped, "
        f"running {', '.join(map(str, kept))}"
    )
