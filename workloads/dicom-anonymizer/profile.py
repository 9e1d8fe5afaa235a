"""The confidentiality profile table (generated from PS3.15 Table E.1-1) and action resolution.

Combined codes are resolved by the attribute's type in the IOD, which the table does not
carry: medplat resolves them to the least destructive action that is conformant for every
type the code allows (X/Z -> Z, X/D and Z/D and X/Z/D -> D, X/Z/U* -> U), and to X when the
attribute is in no standard composite IOD (then it can be required by none).
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

    def action(self, tag: int, options: frozenset[str]) -> tuple[str, str]:
        """(resolved action, where it came from) for a standard attribute under `options`."""
        rule = self.rule(tag)
        if rule is None:
            return "X", "not in Table E.1-1"
        for option in OPTIONS:  # at most one option changes an attribute (dates: policy forbids both)
            if option in options and option in rule.options:
                return rule.options[option], option
        code = rule.basic
        if code in RESOLVED:
            code = RESOLVED[code] if rule.in_standard_iod else "X"
        return code, "basic"


@lru_cache(maxsize=1)
def load_profile() -> Profile:
    package = __name__.rsplit(".", 1)[0]
    return Profile(json.loads((resources.files(package) / TABLE_FILE).read_text(encoding="utf-8")))
