"""One measured figure of a benchmark, always beside the baseline measured in the same run.

The machines are shared and noisy, so an absolute time means little; a ratio against a
named baseline taken in the same run does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Figure:
    name: str            # e.g. "thermocouple inverse, batch"
    value: float
    unit: str            # e.g. "conversions/s"
    baseline_name: str   # e.g. "thermocouple-its90 1.0.2, pure Python"
    baseline_value: float
    higher_is_better: bool = True
    limit: float | None = None   # the acceptance bound on the ratio, if any

    @property
    def ratio(self) -> float:
        """How many times better than the baseline (>1 is better, whichever way better points)."""
        if self.higher_is_better:
            return self.value / self.baseline_value if self.baseline_value else float("inf")
        return self.baseline_value / self.value if self.value else float("inf")

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d

    def line(self) -> str:
        return (f"{self.name}: {self.value:.6g} {self.unit} vs {self.baseline_name} "
                f"{self.baseline_value:.6g} {self.unit} -> {self.ratio:.1f}x")
