"""Burned-in text: clean the pixels instead of quarantining the file (PS3.15 E.3.1 Clean Pixel
Data Option).

1. Known regions: RSNA CTP DicomPixelAnonymizer scripts, read in CTP's own format (signature
   `{ [0008,1090].containsIgnoreCase("LOGIQ9") * Rows.equals("480") }` then rectangles
   `(x,y,w,h)`), evaluated on the header as it was before de-identification.
2. OCR (Tesseract through pytesseract): words matching the header's identifying values
   (captured before scrubbing) or an identifier pattern are blacked out; for the modalities
   the policy lists under `redactAllText` (ultrasound, screen captures) every word is, except
   the policy's allow-list.
3. Verification: OCR again after redaction; text that still reads is redacted once more, and
   if it survives that the file is quarantined (the caller's decision on `remaining`).
Pixels are decoded from any syntax pydicom can read (multi-frame too) and, only when something
was redacted, written back uncompressed with the matching transfer syntax; when nothing is
found the pixel data stays byte-identical.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from medplat.workloads.dicom_anonymizer import freetext

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CLEAN_PIXEL_DATA = ("113101", "Clean Pixel Data Option")
# Tesseract confidences (0-100): identifiers (header values, patterns) are redacted from a low
# one; in all-text mode a word needs more, so ultrasound speckle read as "ae" does not black out
# the image. Verification counts what still reads clearly.
SEEDED, ALL_TEXT = 30.0, 60.0
VERIFY_SEEDED, VERIFY_ALL_TEXT = 50.0, 75.0
# One thread per Tesseract call: workers already run in parallel, and OpenMP threads fighting
# over the cores made each call several times slower.
os.environ.setdefault("OMP_THREAD_LIMIT", "1")

# ---------------------------------------------------------------- CTP DicomPixelAnonymizer scripts

_SIGNATURE = re.compile(r"\{(.*?)\}", re.S)
_REGION = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)")
_CONDITION = re.compile(r'(\[\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\]|[A-Za-z][A-Za-z0-9]*)\s*\.\s*'
                        r'(\w+)\s*\(\s*"((?:[^"\\]|\\.)*)"\s*\)')
METHODS = {
    "equals": lambda v, a: v == a, "equalsIgnoreCase": lambda v, a: v.lower() == a.lower(),
    "contains": lambda v, a: a in v, "containsIgnoreCase": lambda v, a: a.lower() in v.lower(),
    "startsWith": lambda v, a: v.startswith(a), "startsWithIgnoreCase": lambda v, a: v.lower().startswith(a.lower()),
    "endsWith": lambda v, a: v.endswith(a), "endsWithIgnoreCase": lambda v, a: v.lower().endswith(a.lower()),
    "matches": lambda v, a: re.fullmatch(a, v) is not None,
}


@dataclass(frozen=True)
class Rule:
    signature: str  # the CTP boolean expression, as written
    regions: tuple[tuple[int, int, int, int], ...]

    def matches(self, header: dict[str, str]) -> bool:
        return _evaluate(self.signature, header)


def parse_ctp_script(text: str) -> list[Rule]:
    """Every `{ signature }` with the rectangles that follow it; free text between is commentary."""
    rules, blocks = [], list(_SIGNATURE.finditer(text))
    for index, block in enumerate(blocks):
        end = blocks[index + 1].start() if index + 1 < len(blocks) else len(text)
        regions = tuple(tuple(int(n) for n in m.groups()) for m in _REGION.finditer(text, block.end(), end))
        if regions:
            rules.append(Rule(" ".join(block.group(1).split()), regions))
    return rules


def _evaluate(expression: str, header: dict[str, str]) -> bool:
    """CTP's expression grammar: conditions joined by * (and), + (or), ! (not) and parentheses."""
    tokens: list[str] = []
    position = 0
    while position < len(expression):
        char = expression[position]
        if char.isspace():
            position += 1
            continue
        if char in "*+!()":
            tokens.append(char)
            position += 1
            continue
        match = _CONDITION.match(expression, position)
        if not match:
            raise ValueError(f"cannot read the signature at {expression[position:position + 30]!r}")
        element, group, elem, method, argument = match.groups()
        key = f"{group}{elem}".lower() if group else element
        if method not in METHODS:
            raise ValueError(f"unknown CTP method {method!r}")
        tokens.append("T" if METHODS[method](header.get(key, ""), argument.replace('\\"', '"')) else "F")
        position = match.end()
    result, rest = _or(tokens)
    if rest:
        raise ValueError(f"unbalanced signature {expression!r}")
    return result


def _or(tokens):
    value, tokens = _and(tokens)
    while tokens and tokens[0] == "+":
        right, tokens = _and(tokens[1:])
        value = value or right
    return value, tokens


def _and(tokens):
    value, tokens = _not(tokens)
    while tokens and tokens[0] == "*":
        right, tokens = _not(tokens[1:])
        value = value and right
    return value, tokens


def _not(tokens):
    if tokens and tokens[0] == "!":
        value, rest = _not(tokens[1:])
        return not value, rest
    if tokens and tokens[0] == "(":
        value, rest = _or(tokens[1:])
        if not rest or rest[0] != ")":
            raise ValueError("missing ')' in signature")
        return value, rest[1:]
    if not tokens:
        raise ValueError("empty signature term")
    return tokens[0] == "T", tokens[1:]


@lru_cache(maxsize=8)
def shipped_rules(name: str) -> tuple[Rule, ...]:
    if not re.fullmatch(r"[a-z0-9-]+", name):
        raise ValueError(f"pixel rule set {name!r}: lower-case letters, digits and hyphens")
    package = __name__.rsplit(".", 1)[0]
    script = resources.files(package) / "pixel-rules" / f"{name}.script"
    return tuple(parse_ctp_script(script.read_text(encoding="utf-8")))


def header_snapshot(ds) -> dict[str, str]:
    """The top-level values a signature can test, by keyword and by 'ggggeeee', before scrubbing."""
    values: dict[str, str] = {}
    for element in ds:
        if element.VR in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN") or element.tag.is_private:
            continue
        text = "\\".join(str(v) for v in element.value) if element.VM > 1 else str(element.value or "")
        values[f"{element.tag:08x}"] = text
        if element.keyword:
            values[element.keyword] = text
    return values


# ---------------------------------------------------------------- OCR

@dataclass
class Word:
    text: str
    confidence: float
    box: tuple[int, int, int, int]  # x, y, w, h in image pixels


def _grey(frame: np.ndarray) -> np.ndarray:
    """8-bit greyscale for Tesseract, stretched to full range."""
    image = frame.astype(np.float32)
    if image.ndim == 3:
        image = image[..., :3].mean(axis=2)
    low, high = float(image.min()), float(image.max())
    if high <= low:
        return np.zeros(image.shape, dtype=np.uint8)
    return ((image - low) * (255.0 / (high - low))).astype(np.uint8)


def ocr_words(frame: np.ndarray) -> list[Word]:
    import pytesseract
    from PIL import Image

    grey = _grey(frame)
    scale = 3 if max(grey.shape) < 200 else 2 if max(grey.shape) < 400 else 1  # tiny captures read better enlarged
    image = Image.fromarray(grey)
    if scale > 1:
        image = image.resize((grey.shape[1] * scale, grey.shape[0] * scale), Image.Resampling.LANCZOS)
    data = pytesseract.image_to_data(image, config="--psm 11", output_type=pytesseract.Output.DICT)
    words = []
    for text, conf, x, y, w, h in zip(data["text"], data["conf"], data["left"], data["top"], data["width"],
                                      data["height"]):
        text = text.strip()
        if text and float(conf) >= 0:
            words.append(Word(text, float(conf), (x // scale, y // scale, -(-w // scale), -(-h // scale))))
    return words


def _alnum(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z]", "", text)


@dataclass
class Finder:
    """Which OCR'd words are identifying: header values and patterns, or all text but the allow-list."""
    seeds: frozenset[str]
    all_text: bool
    allowed: frozenset[str]

    @classmethod
    def of(cls, identifying: set[str], all_text: bool, allow: list[str]) -> Finder:
        tokens = set()
        for value in identifying:
            for token in re.split(r"[\s^,/\\\-]+", value):
                token = _alnum(token).upper()
                if len(token) >= 3:
                    tokens.add(token)
        return cls(frozenset(tokens), all_text, frozenset(_alnum(a).upper() for a in allow))

    def identifying(self, words: list[Word], verify: bool = False) -> list[Word]:
        seeded_min, text_min, text_len = (VERIFY_SEEDED, VERIFY_ALL_TEXT, 3) if verify else (SEEDED, ALL_TEXT, 2)
        line = " ".join(w.text for w in words if w.confidence >= seeded_min)
        pattern_hits = {_alnum(part).upper() for _kind, found in freetext.find(line) for part in found.split()}
        hits = []
        for word in words:
            token = _alnum(word.text).upper()
            if not token:
                continue
            seeded = any(seed in token or (len(token) >= 4 and token in seed) for seed in self.seeds)
            if word.confidence >= seeded_min and (seeded or token in pattern_hits):
                hits.append(word)
            elif self.all_text and word.confidence >= text_min and len(token) >= text_len and \
                    token not in self.allowed:
                hits.append(word)
        return hits


# ---------------------------------------------------------------- cleaning

@dataclass
class PixelOutcome:
    status: str = "untouched"  # untouched | cleaned
    remaining: str = ""  # non-empty: text still readable after cleaning (quarantine)
    regions: int = 0
    words: int = 0
    details: list[str] = field(default_factory=list)


def _frames(arr: np.ndarray, ds) -> np.ndarray:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return arr if frames > 1 else arr[np.newaxis, ...]


def _black(frame: np.ndarray, box: tuple[int, int, int, int], pad: int = 2) -> None:
    x, y, w, h = box
    frame[max(0, y - pad):max(0, y + h + pad), max(0, x - pad):max(0, x + w + pad), ...] = 0


def clean_pixels(ds, settings, identifying: set[str], header: dict[str, str]) -> PixelOutcome:
    """Clean `ds`'s pixel data in place under the policy's pixel settings; see the module doc."""
    outcome = PixelOutcome()
    if "PixelData" not in ds:
        return outcome
    rules = [rule for name in settings.scripts for rule in shipped_rules(name) if rule.matches(header)]
    modality = header.get("Modality", "").upper()
    all_text = modality in settings.redact_all_text or \
        (header.get("SOPClassUID", "").startswith(SECONDARY_CAPTURE) and "SC" in settings.redact_all_text)
    finder = Finder.of(identifying, all_text, settings.allow_text)
    frames = _frames(ds.pixel_array.copy(), ds)
    for rule in rules:
        for frame in frames:
            for region in rule.regions:
                _black(frame, region, pad=0)
        outcome.regions += len(rule.regions)
        outcome.details.append(f"script rule {rule.signature}")
    if settings.ocr:
        for frame in frames:
            for _round in range(2):  # redact, then redact what the second look still reads
                found = finder.identifying(ocr_words(frame))
                if not found:
                    break
                for word in found:
                    _black(frame, word.box)
                outcome.words += len(found)
        if outcome.regions or outcome.words:
            left = [w.text for frame in frames for w in finder.identifying(ocr_words(frame), verify=True)]
            if left:
                outcome.remaining = f"OCR still reads {len(left)} word(s) after redaction"
                return outcome
    if not (outcome.regions or outcome.words):
        return outcome  # nothing found: the pixel data is not touched
    _write_back(ds, frames)
    outcome.status = "cleaned"
    _mark_clean(ds)
    return outcome


def _write_back(ds, frames: np.ndarray) -> None:
    """Uncompressed pixel data in the decoded colour space (pydicom decodes YBR to RGB)."""
    arr = frames if int(ds.get("NumberOfFrames", 1) or 1) > 1 else frames[0]
    samples = int(ds.get("SamplesPerPixel", 1))
    photometric = "RGB" if samples == 3 else str(ds.PhotometricInterpretation)
    ds.set_pixel_data(arr, photometric, int(ds.BitsStored), generate_instance_uid=False)
    if samples == 3:
        ds.PlanarConfiguration = 0


def _mark_clean(ds) -> None:
    from pydicom.dataset import Dataset

    ds.BurnedInAnnotation = "NO"
    codes = ds.get("DeidentificationMethodCodeSequence")
    if codes is not None and CLEAN_PIXEL_DATA[0] not in [str(item.get("CodeValue", "")) for item in codes]:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = CLEAN_PIXEL_DATA[0], "DCM", CLEAN_PIXEL_DATA[1]
        codes.append(item)


def load_script(path: Path) -> list[Rule]:
    """A site's own CTP script, imported as it is."""
    return parse_ctp_script(path.read_text(encoding="utf-8"))
