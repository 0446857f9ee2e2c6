"""One measured figure of a benchmark, always beside the baseline measured in the same run.

The machines are shared and noisy, so an absolute time means little; a ratio against a
named baseline taken in the same run does. Where the acceptance sets a bound, it is
carried with the figure (`limit` on the ratio, `value_limit` on the value itself) and
the figure says whether it passed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Figure:
    name: str            # e.g. "thermocouple inverse (batch, type K)"
    value: float
    unit: str            # e.g. "conversions/s"
    baseline_name: str   # e.g. "thermocouple-its90 1.0.2, pure Python"
    baseline_value: float
    higher_is_better: bool = True
    limit: float | None = None        # the ratio must be at least this
    resolution: float = 0.0           # smallest measurable value: a zero counts as this in the ratio
    value_limit: float | None = None  # the value must be at most (lower is better) / at least this

    @property
    def ratio(self) -> float:
        """How many times better than the baseline (>1 is better, whichever way better points)."""
        value = max(self.value, self.resolution)
        base = max(self.baseline_value, self.resolution)
        if math.isnan(value) or math.isnan(base) or value == 0 or base == 0:
            return math.nan
        return value / base if self.higher_is_better else base / value

    @property
    def passed(self) -> bool | None:
        """None when no bound applies."""
        checks: list[bool] = []
        if self.limit is not None:
            checks.append(self.ratio >= self.limit)
        if self.value_limit is not None:
            ok = self.value <= self.value_limit if not self.higher_is_better else self.value >= self.value_limit
            checks.append(ok)
        return all(checks) if checks else None

    def as_json(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return None if math.isnan(x) or math.isinf(x) else x

        return {"value": num(self.value), "unit": self.unit, "baseline": self.baseline_name,
                "baseline_value": num(self.baseline_value), "ratio": num(self.ratio),
                "higher_is_better": self.higher_is_better, "ratio_limit": self.limit,
                "value_limit": self.value_limit, "passed": self.passed}

    def line(self) -> str:
        bound = {None: "", True: "  [pass]", False: "  [FAIL]"}[self.passed]
        floor = "≥" if self.resolution and min(self.value, self.baseline_value) <= self.resolution else ""
        return (f"{self.name}: {self.value:.4g} {self.unit}  vs  {self.baseline_name}: {self.baseline_value:.4g}"
                f" {self.unit}  ->  {floor}{self.ratio:.3g}x{bound}")
