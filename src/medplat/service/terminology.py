"""Device terminology shared by the device adapters: MDC (ISO/IEEE 11073-10101) and UCUM.

MDC units are decoded from their code structure instead of a hand-typed list: a unit code is
partition 4 (dimensions) * 65536 + a base unit code (a multiple of 32) + a decimal-prefix code
(0..31). The base units and prefixes come from data files next to this module with their
provenance (mdc-units.csv, mdc-prefixes.csv). A unit without an unambiguous UCUM code keeps its
MDC code and is flagged (`ucum_for_mdc` returns None) - never a guessed UCUM code.
"""
from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

MDC = "urn:iso:std:iso:11073:10101"
UCUM = "http://unitsofmeasure.org"
UNMAPPED_UNIT = "urn:medplat:mdc-unit-without-ucum"  # extension URL flagging an MDC-coded unit
DIMENSION_PARTITION = 4
_HERE = Path(__file__).parent


def _rows(name: str) -> list[dict[str, str]]:
    with open(_HERE / name, encoding="utf-8") as handle:
        return list(csv.DictReader(line for line in handle if not line.startswith("#")))


@lru_cache(maxsize=1)
def _tables() -> tuple[dict[int, str], dict[int, str]]:
    bases = {int(row["base"]): row["ucum"] for row in _rows("mdc-units.csv")}
    prefixes = {int(row["code"]): row["ucum"] for row in _rows("mdc-prefixes.csv")}
    return bases, prefixes


def ucum_for_mdc(code: str | int) -> str | None:
    """The UCUM code of an MDC unit (32-bit context-free code, e.g. 265266 -> mL/h), or None."""
    try:
        number = int(code)
    except (TypeError, ValueError):
        return None
    if number >> 16 != DIMENSION_PARTITION:
        return None
    term = number & 0xFFFF
    bases, prefixes = _tables()
    template, prefix_code = bases.get(term & ~31), term & 31
    if not template or prefix_code not in prefixes:
        return None
    if "{p}" not in template:
        return template if prefix_code == 0 else None
    return template.replace("{p}", prefixes[prefix_code])


def _all_mapped() -> dict[str, str]:
    bases, prefixes = _tables()
    base_code = DIMENSION_PARTITION << 16
    found = {}
    for base in bases:
        for prefix in prefixes:
            ucum = ucum_for_mdc(base_code + base + prefix)
            if ucum is not None:
                found[str(base_code + base + prefix)] = ucum
    return found


# Every MDC unit code with a UCUM equivalent (kept for callers that look codes up directly).
MDC_TO_UCUM: dict[str, str] = _all_mapped()


def mdc_unit(code: str) -> dict[str, str]:
    """An MDC unit code as system + code: UCUM where the unit has a UCUM code, else MDC."""
    ucum = ucum_for_mdc(code)
    return {"system": UCUM, "code": ucum} if ucum is not None else {"system": MDC, "code": str(code)}
