"""The confidentiality profile table (generated from PS3.15 Table E.1-1) and action resolution.

Combined codes are resolved by the attribute's Type in the instance's IOD (PS3.15 E.3.1:
"X unless Z/D is required to maintain IOD conformance"), looked up in `iod-types.json`
(generated from the PS3.3 module tables): Type 1/1C gets a dummy (D), Type 2/2C an empty
value (Z), Type 3 or absent is removed (X); X/Z/U* keeps the element with its UIDs remapped
(U is conformant for every Type and keeps references linked). A sequence is never left
empty unless its Type is 2 (an empty Type 3 sequence is invalid). For an instance of an
unknown SOP Class the least destructive action conformant for every Type is used.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

TABLE_FILE = "ps3.15-table-e1-1.json"
OPTIONS = ("retain-safe-private", "retain-uids", "retain-device-identity", "retain-institution-identity",
           "retain-patient-characteristics", "retain-longitudinal-full-dates", "retain-longitudinal-modified-dates",
           "clean-descriptors", "clean-structured-content", "clean-graphics")
# DICOM CID 7050 "De-identification Method" codes for the profile and its options.
CID_7050 = {"basic": ("113100", "Basic Application Confidentiality Profile"),
            "clean-graphics": ("113103", "Clean Graphics Option"),
            "clean-structured-content": ("113104", "Clean Structured Content Option"),
            "clean-descriptors": ("113105", "Clean Descriptors Option"),
            "retain-longitudinal-full-dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
            "retain-longitudinal-modified-dates": ("113107",
                                                   "Retain Longitudinal Temporal Information Modified Dates Option"),
            "retain-patient-characteristics": ("113108", "Retain Patient Characteristics Option"),
            "retain-device-identity": ("113109", "Retain Device Identity Option"),
            "retain-uids": ("113110", "Retain UIDs Option"),
            "retain-safe-private": ("113111", "Retain Safe Private Option"),
            "retain-institution-identity": ("113112", "Retain Institution Identity Option")}
RESOLVED = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U"}
IOD_TYPES_FILE = "iod-types.json"
# (combined code, Type class) -> action; Type class: "1" (1, 1C), "2" (2, 2C), "3" (3 or absent).
BY_TYPE = {"X/Z": {"1": "D", "2": "Z", "3": "X"}, "X/D": {"1": "D", "2": "Z", "3": "X"},
           "Z/D": {"1": "D", "2": "Z", "3": "Z"}, "X/Z/D": {"1": "D", "2": "Z", "3": "X"},
           "X/Z/U*": {"1": "U", "2": "U", "3": "U"}}


def type_class(kind: str | None) -> str:
    return "3" if not kind else kind[0]


@dataclass(frozen=True)
class Rule:
    name: str
    basic: str
    in_standard_iod: bool
    options: dict[str, str]


class Profile:
    def __init__(self, table: dict) -> None:
        self.source = table["source"]
        self.attributes = {int(tag, 16): Rule(e["name"], e["basic"], e["inStandardIOD"], e["options"])
                           for tag, e in table["attributes"].items()}
        self.patterns = [(p["mask"], p["value"], Rule(p["name"], p["basic"], p["inStandardIOD"], p["options"]))
                         for p in table["patterns"]]
        private = table["private"]
        self.private = Rule(private["name"], private["basic"], False, private["options"])

    def rule(self, tag: int) -> Rule | None:
        found = self.attributes.get(tag)
        if found is not None:
            return found
        group = tag >> 16
        for mask, value, rule in self.patterns:
            # Repeating groups (50xx curves, 60xx overlays) use only even groups up to xx1E.
            if tag & mask == value and group % 2 == 0 and (group & 0xFF) <= 0x1E:
                return rule
        return None

    def action(self, tag: int, options: frozenset[str], kind: str | None = None,
               known_iod: bool = False) -> tuple[str, str]:
        """(resolved action, where it came from) for a standard attribute under `options`;
        `kind` is the attribute's Type in the instance's IOD when the IOD is known."""
        rule = self.rule(tag)
        if rule is None:
            return "X", "not in Table E.1-1"
        for option in OPTIONS:  # at most one option changes an attribute (dates: policy forbids both)
            if option in options and option in rule.options:
                return rule.options[option], option
        code = rule.basic
        if code in RESOLVED:
            if known_iod:
                return BY_TYPE[code][type_class(kind)], f"basic, Type {kind or 3}"
            code = RESOLVED[code] if rule.in_standard_iod else "X"
        return code, "basic"


class IodTypes:
    """Type (1, 1C, 2, 2C, 3) of the Table E.1-1 attributes per IOD, top level and nested."""

    def __init__(self, table: dict) -> None:
        self.source = table["source"]
        self.sop_classes = table["sopClasses"]
        self.iods = {iod: {level: {int(tag, 16): kind for tag, kind in found.items()}
                           for level, found in levels.items()} for iod, levels in table["iods"].items()}

    def for_sop_class(self, sop_class_uid: str) -> dict[str, dict[int, str]] | None:
        iod = self.sop_classes.get(sop_class_uid)
        return self.iods.get(iod) if iod else None


@lru_cache(maxsize=1)
def load_iod_types() -> IodTypes:
    package = __name__.rsplit(".", 1)[0]
    return IodTypes(json.loads((resources.files(package) / IOD_TYPES_FILE).read_text(encoding="utf-8")))


@lru_cache(maxsize=1)
def load_profile() -> Profile:
    package = __name__.rsplit(".", 1)[0]
    return Profile(json.loads((resources.files(package) / TABLE_FILE).read_text(encoding="utf-8")))
