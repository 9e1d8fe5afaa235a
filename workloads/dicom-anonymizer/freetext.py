"""Free text under Clean Descriptors (PS3.15 E.3.5): text is removed unless the policy's
allow-list says it is a plain descriptor; whatever text is kept goes through a pattern pass
for identifiers that need no dictionary: titled names, phone numbers, street addresses,
e-mail addresses, dates and record numbers. The leak scan uses the same patterns, so it finds
identifiers that appear in no identifying attribute of the file.

Patterns cannot find an untitled first name in prose ("ask Maria"): that is why text that is
not allow-listed is removed rather than scrubbed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# Honorifics are matched in mixed case ("Dr Grimsby") or with a period ("DR. GRIMSBY"): an
# upper-case "MR" or "DR" alone is a modality, not a title.
_TITLE = r"(?:\b(?:Dr|Mr|Mrs|Ms|Miss|Prof|Doctor|Sister|Nurse)\b\.?|\b(?:DR|MR|MRS|MS|PROF)\.)"
PATTERNS: dict[str, re.Pattern[str]] = {
    "titled name": re.compile(_TITLE + r"\s*[A-Z][A-Za-z'\-]+(?:\s+[A-Z][A-Za-z'\-]+)?"),
    "phone": re.compile(r"(?<![\w.])(?:\+\d{1,3}[\s\-.]?)?(?:\(\d{2,5}\)[\s\-.]?)?\d{2,5}(?:[\s\-.]\d{2,6}){1,4}"
                        r"(?![\w.])"),
    "facility": re.compile(r"(?:\b[A-Z][A-Za-z'\-]+\s+){1,3}(?:Clinic|Hospital|Medical\s+Cent(?:er|re)|Health\s+"
                           r"Cent(?:er|re)|Infirmary|Practice|Surgery|Klinik|Klinikum|Krankenhaus|Hôpital)\b"),
    "e-mail": re.compile(r"\b[\w.+\-]+@[\w\-]+\.[\w.\-]+\b"),
    "street address": re.compile(r"\b\d{1,5}[A-Za-z]?\s+(?:[A-Z][A-Za-z]+\s+){1,3}(?:Street|St|Road|Rd|Avenue|Ave|"
                                 r"Lane|Ln|Drive|Dr|Boulevard|Blvd|Way|Court|Ct|Place|Pl|Square|Sq|Close|Terrace|"
                                 r"Strasse|Straße|Weg|Gasse|Allee|Platz|rue|Rue)\b\.?", re.IGNORECASE),
    "postcode": re.compile(r"\b[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}\b|\b\d{5}(?:-\d{4})?\b(?=\s+[A-Z][a-z])"),
    "date": re.compile(r"\b(?:\d{1,2}[./\-]\d{1,2}[./\-](?:\d{4}|\d{2})|\d{4}-\d{2}-\d{2}|"
                       r"\d{1,2}\s+(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.?\s+\d{4})\b",
                       re.IGNORECASE),
    "record number": re.compile(r"\b(?:MRN|NHS|SSN|ID|Acc(?:ession)?|Pat(?:ient)?\s*(?:No|ID)|No|#)\.?\s*[:#]?\s*"
                                r"[A-Z]{0,3}\d[\dA-Z\-]{3,}\b|(?<![\d.])\d{7,}(?![\d.])", re.IGNORECASE),
}
_TOKEN = re.compile(r"[A-Za-z]+|\d+(?:\.\d+)?")
_MEASURE = re.compile(r"\d+(?:\.\d+)?")


def find(text: str) -> list[tuple[str, str]]:
    """(kind, matched text) of every identifier pattern in `text`."""
    return [(kind, match.group(0)) for kind, pattern in PATTERNS.items() for match in pattern.finditer(text)]


def matches(text: str) -> bool:
    """Whether any identifier pattern occurs in `text` (what scrub would replace)."""
    return any(pattern.search(text) for pattern in PATTERNS.values())


def scrub(text: str) -> str:
    for pattern in PATTERNS.values():
        text = pattern.sub("***", text)
    return text


@dataclass(frozen=True)
class AllowList:
    """Descriptors kept under Clean Descriptors: a value matching one of `values` (regular
    expressions, whole value, case-insensitive), or made only of `words` and numbers."""
    values: tuple[re.Pattern[str], ...]
    words: frozenset[str]

    @classmethod
    def of(cls, values: list[str], words: list[str]) -> AllowList:
        return cls(tuple(re.compile(v, re.IGNORECASE) for v in values), frozenset(w.upper() for w in words))

    def allows(self, text: str) -> bool:
        stripped = text.strip()
        if not stripped:
            return True
        if any(pattern.fullmatch(stripped) for pattern in self.values):
            return True
        tokens = _TOKEN.findall(stripped)
        return bool(self.words) and all(token.upper() in self.words or (_MEASURE.fullmatch(token) and len(token) <= 4)
                                        for token in tokens)
