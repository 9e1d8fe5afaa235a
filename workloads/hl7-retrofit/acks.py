"""MLLP frames -> messages (single or FHS/BHS batch) and the acknowledgements that answer them
(HL7 v2.5.1 chapter 2: 2.9.2 original mode ACK, 2.10.3 batches — a batch is answered with a
batch of one ACK per message — 2.14.5 ERR, Table 0357; Appendix C MLLP)."""
from __future__ import annotations

import datetime
import itertools
from dataclasses import dataclass, field

from medplat.workloads.hl7_retrofit.errors import Hl7Error
from medplat.workloads.hl7_retrofit.vocabulary import ERRORS

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
HEADERS, TRAILERS = (b"FHS", b"BHS"), (b"BTS", b"FTS")
LEGACY_ERR = {"2.3", "2.3.1", "2.4"}  # ERR-1 (ELD) instead of ERR-2/ERR-3
_ids = itertools.count(1)


@dataclass
class Frame:
    messages: list[bytes]
    headers: list[bytes] = field(default_factory=list)  # FHS / BHS of a batch, empty otherwise
    discarded: int = 0  # stray bytes before the start block


def unframe(block: bytes) -> Frame:
    """One MLLP block (up to and without <FS><CR>) -> its messages. Bytes before the last <VT> are
    line noise or a sender's aborted attempt: dropped, not fatal."""
    start = block.rfind(VT)
    if start < 0:
        raise Hl7Error(100, "malformed MLLP framing: no start block <VT>", reject=True)
    body = block[start + 1:].replace(b"\r\n", CR).replace(b"\n", CR)
    segments = [s for s in body.split(CR) if s.strip()]
    headers = [s for s in segments if s[:3] in HEADERS]
    messages: list[list[bytes]] = []
    for segment in segments:
        if segment[:3] in HEADERS or segment[:3] in TRAILERS:
            continue
        if segment[:3] == b"MSH" or not messages:
            messages.append([])
        messages[-1].append(segment)
    return Frame([CR.join(m) + CR for m in messages], headers, start)


def _escape(text: str) -> str:
    for char, sequence in (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("~", "\\R\\"), ("&", "\\T\\")):
        text = text.replace(char, sequence)
    return text.replace("\r", " ").replace("\n", " ")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M%S+0000")


def ack(original: bytes, code: str, error: Hl7Error | None = None) -> list[str]:
    """The ACK segments for one message (its MSH fields swapped, MSH-18 kept)."""
    line = original.split(CR, 1)[0]
    fields = line.decode("latin-1").split(chr(line[3])) if line.startswith(b"MSH") and len(line) > 8 else []

    def msh(index: int) -> str:
        return fields[index - 1] if len(fields) >= index else ""

    version = msh(12).split("^")[0] or "2.6"
    trigger = msh(9).split("^")[1] if len(msh(9).split("^")) > 1 else "R01"
    structure = "" if version in LEGACY_ERR else "^ACK"
    header = (f"MSH|^~\\&|{msh(5) or 'MEDPLAT'}|{msh(6) or 'MEDPLAT'}|{msh(3)}|{msh(4)}|{_now()}||"
              f"ACK^{trigger}{structure}|"
              f"A{next(_ids):019d}|{msh(11) or 'P'}|{version}||||||{msh(18)}").rstrip("|")
    segments = [header]
    if error is None:
        return [*segments, f"MSA|{code}|{msh(10)}"]
    text = _escape(str(error))[:400]
    name = ERRORS.get(error.code, "")
    location = "^".join(str(part) for part in error.location)
    if version in LEGACY_ERR:  # v2.3/2.4: ERR-1 = segment^sequence^field^code&text&HL70357, MSA-3 text
        place = [str(part) for part in (*error.location, "", "", "")[:3]]
        eld = "^".join([*place, f"{error.code}&{name}&HL70357"])
        return [*segments, f"MSA|{code}|{msh(10)}|{text[:80]}", f"ERR|{eld}"]
    return [*segments, f"MSA|{code}|{msh(10)}", f"ERR||{location}|{error.code}^{name}^HL70357|E||||{text}"]


def batch_ack(headers: list[bytes], acks: list[list[str]]) -> list[str]:
    """A batch answering a batch: FHS/BHS with the original control ids as reference (FHS-12 /
    BHS-12), one ACK per message, BTS/FTS with the counts."""
    segments = []
    for header in headers:
        fields = header.decode("latin-1").split(chr(header[3])) if len(header) > 3 else [header.decode("latin-1")]
        kind = fields[0]
        control = fields[10] if len(fields) > 10 else ""
        segments.append(f"{kind}|^~\\&|MEDPLAT|MEDPLAT|{fields[2] if len(fields) > 2 else ''}|"
                        f"{fields[3] if len(fields) > 3 else ''}|{_now()}||||B{next(_ids):019d}|{control}")
    segments += [segment for one in acks for segment in one]
    if any(h.startswith(b"BHS") for h in headers):
        segments.append(f"BTS|{len(acks)}")
    if any(h.startswith(b"FHS") for h in headers):
        segments.append("FTS|1")
    return segments


def encode(segments: list[str], codec: str = "ascii") -> bytes:
    return ("\r".join(segments) + "\r").encode(codec, "replace")
