"""The batch records as one tidy CSV table for LCA tools (openLCA, SimaPro and the like).

One row per batch and exchange: what went into the batch (electricity, hydrogen, argon, cooling
water, the feed) and what came out (the product, the hydrogen vented), with the batch's identity on
every row so a tool can import it as exchanges of one process per batch::

    batch_id,site,station,process,recipe,recipe_sha256,started,ended,outcome,direction,flow,amount,unit,complete,basis,amount_kg

``direction`` is ``input`` or ``output`` for an exchange. ``amount_kg`` is the mass of a material
exchange (gases from their normal litres at the densities in :data:`KG_PER_NL`; feed and product
as weighed); empty where the flow is no mass (electricity, cooling water in litres, an impact).

**The CO2e is an impact line, not an exchange** (``direction`` ``impact``, flow ``climate change
(GWP100) of the electricity``): it is computed from the electricity beside it at the station's grid
factor, so an LCA tool that also characterises the electricity input with its own database would
count that electricity's emissions twice if the CO2e came in as an elementary flow. It stays in the
file for a reader of the table (what the station itself reported), and a tool importing exchanges
skips it by its direction.

**The hydrogen vented** (``output``, ``hydrogen, vented``) is the H2 fed minus the H2 the charge absorbed
(the controller's estimate at the end of absorption): the free gas the pump takes to the stack when
degassing starts. The H2 desorbed from the charge later in degassing is not in it. It is an estimate,
never ``complete``.

**Amounts are the record's figures, never invented.** An unknown figure (not metered, not
weighed) has an empty ``amount``, never 0. ``complete`` is ``false`` for a lower bound (a meter
gap at the start or end, a counter reset: the true figure is higher) and for an unknown figure.
Numbers are written plainly: ``.`` as decimal point, no thousands separator, no exponent, and
every digit Python needs to read back the same float.

``basis`` says where a figure comes from: ``metered``; ``heater model`` (electricity only, when
there is no energy meter: rated power x heater on-time); ``weighed``; ``grid factor X kg/kWh x
metered electricity`` for the CO2e; and for an empty amount why it is empty (``not metered``,
``meter never answered``, ``not weighed``, ``not computed: ...``). A metered figure the record marks
incomplete gives its first reason (``metered; incomplete: ...``).

Only finished records (``record == "end"``) are exported unless ``include_open`` is set: a
running batch's figures would be imported as if they were a whole batch's.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from edge.batch.record import RECORD_FILE, RecordError, read_record
from edge.timestamps import parse_time

COLUMNS = ("batch_id", "site", "station", "process", "recipe", "recipe_sha256", "started", "ended", "outcome",
           "direction", "flow", "amount", "unit", "complete", "basis", "amount_kg")

# what goes in and comes out, per process (feed, product)
MATERIALS = {"hd": ("NdFeB scrap", "NdFeB HD powder"), "sintering": ("NdFeB powder compacts", "sintered NdFeB")}
DEFAULT_MATERIALS = ("NdFeB feed", "NdFeB product")
METERED_FLOWS = (("h2", "hydrogen", "NL"), ("ar", "argon", "NL"), ("cooling_water", "cooling water", "L"))
# kg per normal litre (0 degC, 1.01325 bar): the gas densities at these conditions as tabulated in the CRC
# Handbook of Chemistry and Physics (H2 0.08988 g/L, Ar 1.784 g/L; the ideal gas gives 0.08994 and 1.7823)
KG_PER_NL = {"hydrogen": 0.08988e-3, "argon": 1.784e-3}
IMPACT = "climate change (GWP100) of the electricity"
Row = tuple[str, str, str, str, bool, str, str]   # direction, flow, amount, unit, complete, basis, amount_kg


@dataclass
class ExportResult:
    """What an export wrote: batches and rows, and the records it skipped with the reason."""

    batches: int = 0
    rows: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    open_left_out: int = 0


def plain_number(value: Any) -> str:
    """A figure as plain decimal text that reads back as the same number; '' for unknown (None, NaN, text)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return ""
    text = format(Decimal(repr(value)), "f")  # repr: the shortest digits that round-trip; 'f': never an exponent
    return "0" if text in ("0", "-0") else text


def batch_dirs(path: Path) -> list[Path]:
    """The batch folders at ``path``: itself (a batch folder), or those of a state dir or its ``batches`` folder."""
    path = Path(path)
    if (path / RECORD_FILE).is_file():
        return [path]
    batches = path / "batches" if (path / "batches").is_dir() else path
    if not batches.is_dir():
        raise RecordError(f"{path}: no such state dir or batch folder")
    return sorted(p for p in batches.iterdir() if p.is_dir() and not p.name.startswith("."))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _finite(value: Any) -> bool:
    return plain_number(value) != ""


def _kg(flow: str, amount: str) -> str:
    """The mass of ``amount`` normal litres of a gas (``hydrogen``, ``hydrogen, vented``), '' when not known."""
    density = KG_PER_NL.get(flow.partition(",")[0])
    return plain_number(round(float(amount) * density, 9)) if amount and density is not None else ""


def _metered_basis(q: dict[str, Any]) -> str:
    notes = [str(n) for n in q.get("notes") or [] if str(n).strip()]
    return "metered" if q.get("complete") is True or not notes else f"metered; incomplete: {notes[0]}"


def exchanges(body: dict[str, Any]) -> list[Row]:
    """(direction, flow, amount, unit, complete, basis, amount_kg) of one record body, in a fixed order."""
    acc = _dict(body.get("accounting"))
    meters = _dict(acc.get("meters"))
    feed_name, product_name = MATERIALS.get(str(body.get("process")), DEFAULT_MATERIALS)
    out: list[tuple[str, str, str, str, bool, str]] = []

    finished = body.get("record") == "end"       # an open record's figures are so far: never complete
    energy = _dict(meters.get("energy"))
    model = acc.get("heater_model_kwh")
    if _finite(energy.get("value")):
        e_basis, e_complete = "metered", energy.get("complete") is True and finished
        out.append(("input", "electricity", plain_number(energy["value"]), "kWh", e_complete, _metered_basis(energy)))
    elif _finite(model) and meters.get("energy") is None:
        # no meter at all: the duty model is the only figure there is, and it is an estimate, not a measurement
        e_basis, e_complete = "heater model (estimate)", False
        out.append(("input", "electricity", plain_number(model), "kWh", e_complete, e_basis))
    elif meters.get("energy") is not None:
        e_basis, e_complete = "meter never answered", False
        out.append(("input", "electricity", "", "kWh", False, e_basis))
    else:
        e_basis, e_complete = "not metered", False
        out.append(("input", "electricity", "", "kWh", False, e_basis))
    for key, flow, unit in METERED_FLOWS:
        q = _dict(meters.get(key))
        if _finite(q.get("value")):
            out.append(("input", flow, plain_number(q["value"]), str(q.get("unit") or unit),
                        q.get("complete") is True and finished, _metered_basis(q)))
        else:
            out.append(("input", flow, "", unit, False, "meter never answered" if q.get("source") else "not metered"))
    mass_in = _dict(body.get("feed")).get("mass_in_kg")
    out.append(("input", feed_name, plain_number(mass_in), "kg", _finite(mass_in),
                "weighed" if _finite(mass_in) else "not weighed"))
    mass_out = _dict(body.get("product")).get("mass_out_kg")
    out.append(("output", product_name, plain_number(mass_out), "kg", _finite(mass_out),
                "weighed" if _finite(mass_out) else "not weighed"))
    if body.get("process") == "hd" or _finite(acc.get("h2_absorbed_nl")):
        out.append(_vented(_dict(meters.get("h2")), acc.get("h2_absorbed_nl")))
    grid, co2e = acc.get("grid_kg_co2e_per_kwh"), acc.get("kg_co2e")
    grid_text = f"grid factor {plain_number(grid)} kg/kWh" if _finite(grid) else "grid factor not stated"
    if _finite(co2e):
        basis = f"{grid_text} x {e_basis} electricity"
        out.append(("impact", IMPACT, plain_number(co2e), "kg CO2e", e_complete, basis))
    else:
        why = "no electricity figure" if _finite(grid) else "grid factor not stated"
        out.append(("impact", IMPACT, "", "kg CO2e", False, f"not computed: {why}"))
    return [(*row, _kg(row[1], row[2]) if row[3] == "NL" else row[2] if row[3] == "kg" else "") for row in out]


def _vented(fed: dict[str, Any], absorbed: Any) -> tuple[str, str, str, str, bool, str]:
    """The H2 vented: fed minus absorbed (module docstring), an estimate; or why there is none."""
    if not _finite(fed.get("value")):
        why = "H2 not metered"
    elif not _finite(absorbed):
        why = "H2 absorbed not estimated"
    else:
        vented = max(float(fed["value"]) - float(absorbed), 0.0)
        basis = "H2 fed minus H2 absorbed (estimate)" + ("" if fed.get("complete") is True else
                                                          "; H2 fed is a lower bound")
        return ("output", "hydrogen, vented", plain_number(round(vented, 6)), "NL", False, basis)
    return ("output", "hydrogen, vented", "", "NL", False, f"not computed: {why}")


def _start_order(body: dict[str, Any]) -> tuple[bool, float, str]:
    """Batches by start time; those without a readable one last, by id."""
    started = parse_time(body.get("started"))
    return started is None, started.timestamp() if started else 0.0, str(body.get("batch_id") or "")


def export_csv(state_dirs_or_batch_dirs: Iterable[Path | str], out: TextIO, *,
               include_open: bool = False) -> ExportResult:
    """Write the exchanges of every batch under the given state dirs or batch folders to ``out`` as CSV.

    Batches come in order of their start time (unknown last). A record that cannot be read or trusted is not
    exported; it is listed in the result's ``skipped`` (the caller says so), as is a folder that
    does not exist.
    """
    result = ExportResult()
    bodies: list[dict[str, Any]] = []
    for given in state_dirs_or_batch_dirs:
        try:
            folders = batch_dirs(Path(given))
        except RecordError as exc:
            result.skipped.append((Path(given), str(exc)))
            continue
        for folder in folders:
            try:
                body = _dict(read_record(folder)["body"])
            except RecordError as exc:
                result.skipped.append((folder, str(exc)))
                continue
            if body.get("record") != "end" and not include_open:
                result.open_left_out += 1
                continue
            bodies.append(body)
    result.batches, result.rows = write_exchanges(bodies, out)
    return result


def write_exchanges(bodies: Iterable[dict[str, Any]], out: TextIO) -> tuple[int, int]:
    """The header and every exchange of the record ``bodies`` (local record bodies, in order of their start
    time) as CSV to ``out``: (batches, rows). The one writer of this table: ``reedge report --csv`` and the
    plant's historian (``reedge historian report --csv``) both write through it."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    batches = rows = 0
    for body in sorted(bodies, key=_start_order):
        recipe = _dict(body.get("recipe"))
        ident = [body.get("batch_id"), body.get("site"), body.get("station"), body.get("process"), recipe.get("name"),
                 recipe.get("sha256"), body.get("started"), body.get("ended"), body.get("outcome")]
        ident_text = ["" if v is None else str(v) for v in ident]
        for direction, flow, amount, unit, complete, basis, kg in exchanges(body):
            writer.writerow([*ident_text, direction, flow, amount, unit, "true" if complete else "false", basis, kg])
            rows += 1
        batches += 1
    return batches, rows
