"""A lazy reader of HL7 v2 ER7 (the |^~\\& encoding, v2.5.1 section 2.5): segments are split into
fields up front, fields into repetitions and components only when read.

Why not python-hl7's parser: it builds the whole container tree of every message; on this
machine that is ~1.9 ms of CPU for a 13-segment PCD-01 message against ~0.01 ms for splitting, and
most of the tree is never read (benchmarks/hl7_mllp.py prints both). python-hl7 still decodes the
escape sequences (hl7.util.unescape) and serves as the oracle in tests/test_hl7_conformance.py,
which checks that this reader returns what python-hl7 returns for every field of the messages
written from the standards."""
from __future__ import annotations

from hl7.util import unescape as hl7_unescape


class Segment:
    __slots__ = ("parts", "offset", "separator")

    def __init__(self, line: str, field_separator: str) -> None:
        self.parts, self.separator = line.split(field_separator), field_separator
        # MSH-1 is the field separator itself, so after splitting MSH-n sits at n-1.
        self.offset = 1 if self.parts[0] == "MSH" else 0

    @property
    def name(self) -> str:
        return self.parts[0]

    def __len__(self) -> int:
        """Number of fields including the segment name (as in python-hl7)."""
        return len(self.parts) + self.offset

    def field(self, index: int) -> str:
        position = index - self.offset
        if 0 < position < len(self.parts):
            return self.parts[position]
        return self.separator if index == 1 and self.offset else ""


class Delimiters:
    """MSH-1/MSH-2 (field, component, repetition, escape, subcomponent); .esc and .separators in
    python-hl7's layout so that python-hl7's unescape works on it."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.field_separator, self.component, self.repetition, self.esc, self.subcomponent = key
        if len(set(key)) != 5:
            raise ValueError(f"MSH-1/MSH-2 separators {key!r} are not five distinct characters")
        self.separators = "\r" + self.field_separator + self.repetition + self.component + self.subcomponent

    def unescape(self, text: str, app_map: dict | None = None) -> str:
        return hl7_unescape(self, text, app_map)


class Message(Delimiters):
    def __init__(self, text: str) -> None:
        if not text.startswith("MSH") or len(text) < 8:
            raise ValueError("the first segment is not MSH")
        super().__init__(text[3:8])
        self.segments = [Segment(line, self.field_separator) for line in text.split("\r") if line.strip()]

    def segment(self, name: str) -> Segment:
        return next(s for s in self.segments if s.name == name)

    def repetitions(self, segment: Segment, index: int) -> list[str]:
        value = segment.field(index)
        if segment.offset and index == 2:
            return [value]  # MSH-2 holds the separators themselves
        return value.split(self.repetition) if value else []

    def components(self, segment: Segment, index: int, repetition: int = 0) -> list[str]:
        """Components of one repetition (subcomponents left joined); [] when absent."""
        repetitions = self.repetitions(segment, index)
        if len(repetitions) <= repetition:
            return []
        return repetitions[repetition].split(self.component)

    def first(self, segment: Segment, index: int) -> str:
        """Component 1 of repetition 1."""
        components = self.components(segment, index)
        return components[0] if components else ""

