"""Run the benchmarks: ``python -m bench [--json] [--quick] [NAME...]`` (or ``./dev bench``).

Every figure is printed beside its baseline measured in the same run, with the ratio.
``--json`` prints one JSON object: {"figures": {name: {value, unit, baseline, baseline_value,
ratio, ...}}, "machine": {...}}. Exits 1 when a figure misses its acceptance bound.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys

from bench.figures import Figure

BENCHES = {
    "thermocouple": "bench.bench_thermocouple",
    "sampler": "bench.bench_sampler",
    "outbox": "bench.bench_outbox",
    "session": "bench.bench_session",
    "link": "bench.bench_link",
    "scan": "bench.bench_scan",
    "flood": "bench.bench_flood",
    "historian": "bench.bench_historian",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("names", nargs="*", choices=[*BENCHES, []], help="benchmarks to run (default: all)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test, figures are noisier)")
    args = ap.parse_args(argv)
    figures: list[Figure] = []
    for name in args.names or list(BENCHES):
        module = importlib.import_module(BENCHES[name])
        if not args.json:
            print(f"== {name}", file=sys.stderr, flush=True)
        got: list[Figure] = module.run(quick=args.quick)
        figures.extend(got)
        if not args.json:
            for f in got:
                print(f.line(), flush=True)
    if args.json:
        print(json.dumps({"figures": {f.name: f.as_json() for f in figures},
                          "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                      "platform": platform.platform(), "quick": args.quick}}, indent=1))
    return 1 if any(f.passed is False for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
