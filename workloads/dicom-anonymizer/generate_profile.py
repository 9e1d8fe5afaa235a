"""Generate the project's profile table from DICOM PS3.15 Annex E Table E.1-1.

Input: the machine-readable 2024b table (`../shared/data/dicom-ps315/` in the workspace,
extracted by innolitics/dicom-standard). Output: `ps3.15-table-e1-1.json` beside this file,
citing the revision and the input's SHA-256, with tag patterns such as (50xx,xxxx) turned
into mask/value pairs. Run:
    python -m medplat.workloads.dicom_anonymizer.generate_profile INPUT.json [OUTPUT.json]
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

REVISION = "DICOM PS3.15 2024b, Annex E, Table E.1-1 Application Level Confidentiality Profile Attributes"
OPTIONS = {  # input key -> option name used in policies (and its CID 7050 code)
    "rtnSafePrivOpt": "retain-safe-private",
    "rtnUIDsOpt": "retain-uids",
    "rtnDevIdOpt": "retain-device-identity",
    "rtnInstIdOpt": "retain-institution-identity",
    "rtnPatCharsOpt": "retain-patient-characteristics",
    "rtnLongFullDatesOpt": "retain-longitudinal-full-dates",
    "rtnLongModifDatesOpt": "retain-longitudinal-modified-dates",
    "cleanDescOpt": "clean-descriptors",
    "cleanStructContOpt": "clean-structured-content",
    "cleanGraphOpt": "clean-graphics",
}
BASIC_CODES = {"D", "Z", "X", "K", "C", "U", "X/Z", "X/D", "X/Z/D", "Z/D", "X/Z/U*"}
OUTPUT = Path(__file__).with_name("ps3.15-table-e1-1.json")


def _tag(text: str) -> tuple[str, int, int]:
    """'(0010,0010)' -> ('00100010', mask, value); 'x' digits become wildcards."""
    digits = text.strip("()").replace(",", "").lower()
    if len(digits) != 8 or any(c not in "0123456789abcdefx" for c in digits):
        raise ValueError(f"not a tag: {text!r}")
    mask = int("".join("0" if c == "x" else "f" for c in digits), 16)
    value = int(digits.replace("x", "0"), 16)
    return digits, mask, value


def generate(rows: list[dict]) -> dict:
    attributes, patterns, private = {}, [], None
    for row in rows:
        if row["tag"].upper().startswith("(GGGG,EEEE) WHERE GGGG IS ODD"):
            private = {"name": row["name"], "basic": row["basicProfile"],
                       "options": {OPTIONS[k]: v for k, v in sorted(row.items()) if k in OPTIONS}}
            continue
        digits, mask, value = _tag(row["tag"])
        if row["basicProfile"] not in BASIC_CODES:
            raise ValueError(f"{row['tag']}: unknown action code {row['basicProfile']!r}")
        entry = {"name": row["name"], "basic": row["basicProfile"], "inStandardIOD": row.get("stdCompIOD") == "Y",
                 "options": {OPTIONS[k]: v for k, v in sorted(row.items()) if k in OPTIONS}}
        for option, code in entry["options"].items():
            if code not in ("K", "C"):
                raise ValueError(f"{row['tag']}: option {option} has unexpected code {code!r}")
        if mask == 0xFFFFFFFF:
            attributes[digits] = entry
        else:
            patterns.append({"tag": digits, "mask": mask, "value": value, **entry})
    if private is None:
        raise ValueError("the table has no row for private attributes")
    return {"source": REVISION, "private": private, "attributes": dict(sorted(attributes.items())),
            "patterns": sorted(patterns, key=lambda p: p["tag"])}


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: generate_profile INPUT.json [OUTPUT.json]", file=sys.stderr)
        return 2
    source = Path(argv[0])
    data = source.read_bytes()
    table = generate(json.loads(data))
    table = {"source": table["source"], "inputSha256": hashlib.sha256(data).hexdigest(), **table}
    output = Path(argv[1]) if len(argv) > 1 else OUTPUT
    partial = output.with_name(output.name + ".partial")
    partial.write_text(json.dumps(table, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    partial.replace(output)
    print(f"{output}: {len(table['attributes'])} attributes, {len(table['patterns'])} patterns ({REVISION})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
