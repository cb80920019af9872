"""Numbers as the report and `stackbench compare` print them: no more digits than the method
behind them supports."""

from __future__ import annotations

import math

__all__ = ["SIGNIFICANT", "number"]

# Percentiles come from HdrHistograms kept to 3 significant digits; other figures are no
# better than that (CPU per request is bounded by /proc's tick, memory slopes by the fit).
SIGNIFICANT = 3


def number(value: float | None, error: float | None = None, significant: int = SIGNIFICANT) -> str:
    """`value` to `significant` digits, or, given its absolute `error`, down to the digit the
    error touches; thousands separated. An en dash for no value."""
    if value is None or math.isnan(value):
        return "\u2013"  # an en dash
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if error and abs(value) < error:
        return f"< {number(error, error)}"  # no digit of the value is known, not even its first
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = significant - 1 - magnitude
    if error:
        # The last digit printed is the first the error touches.
        decimals = -math.floor(math.log10(error))
    if decimals <= 0:
        return f"{round(value, decimals):,.0f}"
    return f"{value:,.{decimals}f}"
