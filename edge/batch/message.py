"""The batch record on MQTT (``mqtt_schemas/batch.json``), both ways.

A station publishes its local record (:mod:`edge.batch.record`) as a ``start`` and an ``end`` message:
:func:`mqtt_start_body` and :func:`mqtt_end_body` (the accounting flat, the unit in each key, as schema 1.0
promised its consumers; each meter's detail beside it in ``meters``). A consumer of the stream (the plant's
historian) takes an end message back to the local record's shape with :func:`local_end_body`, so the
station's own report and export code render and export it, and nothing is computed a second way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def mqtt_start_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The ``start`` record of a batch, from its local record."""
    recipe = body["recipe"]
    return {"record": "start", "batch_id": body["batch_id"], "process": body["process"],
            "recipe": {"name": recipe["name"], "sha256": recipe["sha256"], "version": recipe["version"]},
            "operator": body["operator"], "started": body["started"], "feed": dict(body["feed"])}


def mqtt_end_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The ``end`` record: the local record, with the accounting flat (unit in the key, as schema 1.0
    promised its consumers) and each meter's detail beside it in ``meters``."""
    acc = body["accounting"]
    meters = acc["meters"]
    per_kg = acc["per_kg"]

    def value(meter: str) -> float | None:
        q = meters.get(meter)
        return None if q is None else q["value"]

    flat: dict[str, Any] = {
        "energy_kwh": value("energy"), "heater_model_kwh": acc["heater_model_kwh"],
        "heater_rated_kw": acc["heater_rated_kw"], "h2_nl": value("h2"), "ar_nl": value("ar"),
        "cooling_water_l": value("cooling_water"), "h2_absorbed_nl": acc["h2_absorbed_nl"],
        "grid_kg_co2e_per_kwh": acc["grid_kg_co2e_per_kwh"], "kg_co2e": acc["kg_co2e"],
        "kwh_per_kg": per_kg["kwh"], "nl_h2_per_kg": per_kg["nl_h2"], "nl_ar_per_kg": per_kg["nl_ar"],
        "kg_co2e_per_kg": per_kg["kg_co2e"], "complete": acc["complete"],
        "trips": sum(1 for e in body["events"] if e["kind"] == "trip"),
        "alarms_raised": sum(1 for e in body["events"] if e["kind"] == "alarm"),
    }
    for meter, q in meters.items():
        if q is not None:
            flat[f"{meter}_complete"] = q["complete"]
    keys = ("record", "revision", "batch_id", "process", "outcome", "reason", "started", "ended", "duration_s",
            "operator", "feed", "product", "phases", "events", "events_not_listed", "interruptions")
    out = {k: body[k] for k in keys}
    if "quality" in body:            # optional in the schema: records written before it have none
        out["quality"] = dict(body["quality"])
    recipe = body["recipe"]
    out["recipe"] = {"name": recipe["name"], "sha256": recipe["sha256"], "version": recipe["version"],
                     "text": recipe["text"]}
    out["accounting"] = flat
    out["meters"] = meters
    return out


# the flat accounting keys of the MQTT end record and where they sit in the local record's ``accounting``
_PER_KG_KEYS = {"kwh_per_kg": "kwh", "nl_h2_per_kg": "nl_h2", "nl_ar_per_kg": "nl_ar", "kg_co2e_per_kg": "kg_co2e"}
_METER_KEYS = {"energy": ("energy_kwh", "kWh"), "h2": ("h2_nl", "NL"), "ar": ("ar_nl", "NL"),
               "cooling_water": ("cooling_water_l", "L")}


def local_end_body(message_body: Mapping[str, Any], *, site: str, station: str) -> dict[str, Any]:
    """The local record's body from an MQTT ``end`` record (the inverse of :func:`mqtt_end_body`), so that a
    consumer of the stream (the plant's historian) renders and exports it with the station's own report and
    export code. ``site`` and ``station`` come from the envelope. A record without ``meters`` (schema 1.0) gets
    one figure per metered key, complete as its ``<meter>_complete`` (else the record's ``complete``) says."""
    flat = dict(message_body.get("accounting") or {})
    meters = message_body.get("meters")
    if not isinstance(meters, Mapping):
        meters = {}
        for meter, (key, unit) in _METER_KEYS.items():
            if flat.get(key) is not None:
                complete = flat.get(f"{meter}_complete", flat.get("complete"))
                meters[meter] = {"value": flat[key], "unit": unit, "complete": complete is True, "notes": []}
            else:
                meters[meter] = None
    accounting = {"meters": dict(meters), "per_kg": {local: flat.get(key) for key, local in _PER_KG_KEYS.items()},
                  **{k: flat.get(k) for k in ("heater_model_kwh", "heater_rated_kw", "h2_absorbed_nl",
                                              "grid_kg_co2e_per_kwh", "kg_co2e", "complete")}}
    body = {k: v for k, v in message_body.items() if k not in ("accounting", "meters")}
    return {**body, "site": site, "station": station, "accounting": accounting}
