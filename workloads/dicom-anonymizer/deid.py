"""De-identify one pydicom Dataset under a policy: Table E.1-1 actions with options, recursive
through sequences, consistent UIDs, pseudonymous PatientID, per-patient date shift; then
collect the identifying values it saw so the leak scan can look for them in the output.

Attributes the table does not list are kept when they are standard DICOM attributes (a
policy can still classify them `identifying`, which removes them); attributes unknown to
the DICOM dictionary and private attributes are removed unless the policy keeps them.
"""
from __future__ import annotations

import datetime
import hashlib
import hmac
import re
from collections import Counter
from dataclasses import dataclass, field

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag, repeater_has_tag
from pydicom.tag import Tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from medplat.workloads.dicom_anonymizer import freetext
from medplat.workloads.dicom_anonymizer.policy import Policy
from medplat.workloads.dicom_anonymizer.profile import CID_7050, Profile, load_iod_types, type_class
from medplat.workloads.pseudonymizer.pseudonyms import pseudonym

TEXT_VRS = {"PN", "LO", "SH", "LT", "ST", "UT", "UC", "AE", "DA", "DT", "UR"}  # CS: codes, not identities
FREE_TEXT = {"LO", "SH", "LT", "ST", "UT", "UC", "PN"}
LONG_TEXT = {"LT", "ST", "UT", "UC"}
DESCRIPTIVE = {"LO", "SH", "LT", "ST", "UT", "UC"}  # free text the pattern pass reads
SCANNED_VRS = TEXT_VRS | {"SQ", "UN", "OB", "CS", "SH"}
# Attributes of coded concepts describe the code, not the patient: the leak scan skips them.
CODE_ATTRIBUTES = {0x00080100, 0x00080102, 0x00080103, 0x00080104, 0x00080119}
NUMERIC_ZERO = {"US": 0, "SS": 0, "UL": 0, "SL": 0, "FL": 0.0, "FD": 0.0, "UV": 0, "SV": 0, "DS": "0", "IS": "0"}
PATIENT_ID, PATIENT_NAME = 0x00100020, 0x00100010
RAW_TEXT_ENCODINGS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}


@dataclass(frozen=True)
class Keys:
    project: bytes  # UIDs and date shifts: stable across batches, so references stay linked
    patient: bytes  # the pseudonymizer domain key for PatientID


@dataclass
class Outcome:
    identifying: set[str] = field(default_factory=set)
    retained: set[int] = field(default_factory=set)  # tags kept on purpose by the table or an option
    actions: Counter = field(default_factory=Counter)


def new_uid(key: bytes, uid: str) -> str:
    """2.25 UID from HMAC-SHA256: the same input UID maps to the same output under one key."""
    digest = hmac.new(key, b"uid|" + uid.encode(), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def date_shift_days(key: bytes, patient_id: str) -> int:
    digest = hmac.new(key, b"date-shift|" + patient_id.encode(), hashlib.sha256).digest()
    return -(int.from_bytes(digest[:4], "big") % 3650 + 1)  # 1 day .. 10 years back, per patient


def shift_date(value: str, days: int) -> str:
    """YYYYMMDD shifted by `days`; the ACR-NEMA form YYYY.MM.DD is read too (and written as DA)."""
    value = value.strip()
    if len(value) >= 10 and value[4] in ".-" and value[7] in ".-":
        value = value[:4] + value[5:7] + value[8:10]
    try:
        return (datetime.date(int(value[:4]), int(value[4:6]), int(value[6:8])) + datetime.timedelta(days)).strftime(
            "%Y%m%d")
    except (ValueError, IndexError):
        return ""


def shift_value(value: str, days: int, vr: str) -> str:
    """A DA or DT value shifted; a DT keeps its time part, an unreadable date becomes empty."""
    shifted = shift_date(value, days)
    return shifted + value.strip()[8:] if shifted and vr == "DT" and value[4:5].isdigit() else shifted


IDENTIFYING_WORDS = re.compile(r"(ID|IDs|Number|Numbers|Address|Institution|InstitutionName|Station|Physician|"
                               r"PhysicianName|Operator|Name|Names|TelephoneNumbers|Comments?)$|Institution|Physician|"
                               r"Patient|Responsible|Performing|Requesting|Referring|Operator")


def is_identifying(vr: str, tag: int) -> bool:
    """Names, IDs, dates, addresses, institution and people strings: what the leak scan looks for."""
    if vr in ("PN", "DA", "DT"):
        return True
    return vr in TEXT_VRS and bool(IDENTIFYING_WORDS.search(keyword_for_tag(tag) or ""))


def _repeating_group(tag: int) -> bool:
    group = tag >> 16
    return (0x5000 <= group <= 0x501E or 0x6000 <= group <= 0x601E) and group % 2 == 0


def _entries(dataset: Dataset):
    """(tag, VR, is private) of each element without converting its value: most elements are
    kept untouched, and raw elements are written back as they were read. An element that
    arrived as UN (implicit VR from elsewhere) but is in the dictionary is decoded with the
    dictionary VR first, sequences included, so it is de-identified like any other. In an
    implicit VR file the dictionary gives the VR (only an ambiguous one, e.g. 'US or SS', is
    settled by decoding the element as pydicom does; so is every element of a file whose
    elements are implicit VR but whose transfer syntax says explicit)."""
    implicit = dataset.original_encoding[0] is True
    for tag, item in list(dataset.items()):
        vr = item.VR
        if (vr is None or vr == "UN") and dictionary_has_tag(tag):
            known = dictionary_VR(tag)
            vr = known if vr is None and implicit and " or " not in known else dataset[tag].VR  # decoded by pydicom
            if vr == "UN":
                vr = known
        yield int(tag), vr or "UN", bool(tag >> 16 & 1)


def _raw_text(dataset: Dataset, tag: int, encoding: str | None) -> str | None:
    """The text of an element still in its raw bytes, when the character set decodes byte for
    byte (an item with its own Specific Character Set is decoded by pydicom instead)."""
    raw = dataset.get_item(tag)
    if encoding is None or not isinstance(raw, RawDataElement) or not isinstance(raw.value, bytes) or \
            0x00080005 in dataset:
        return None
    return raw.value.decode(encoding, "replace")


def _as_list(value) -> list:
    """The values of a possibly multi-valued element (pydicom gives one value or a MultiValue)."""
    return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]


def _strings(value) -> list[str]:
    found = []
    for item in _as_list(value):
        if item is None:
            continue
        text = str(item).strip()
        if text:
            found.append(text)
            if isinstance(item, PersonName):
                found += [part for part in (item.family_name, item.given_name) if len(part) >= 3]
    return found


class Deidentifier:
    def __init__(self, profile: Profile, policy: Policy, keys: Keys) -> None:
        self.profile, self.policy, self.keys = profile, policy, keys
        self.options = policy.option_set
        self.keep_private = {entry.lower() for entry in policy.keep_private}
        self.identifying_tags = {int(tag.replace(",", ""), 16) for tag, kind in policy.classification.items()
                                 if kind == "identifying"}
        self.classified_kept = {int(tag.replace(",", ""), 16) for tag, kind in policy.classification.items()
                                if kind != "identifying"}
        self.allow = freetext.AllowList.of(policy.free_text.allow_values, policy.free_text.allow_words)
        # No private attribute can be kept (no Retain Safe Private list, no override of one): each
        # goes without asking per element, its creator with it (its block would be dropped anyway).
        self.private_all_removed = not (self.keep_private and "retain-safe-private" in self.options) and \
            not any(int(tag[:4], 16) & 1 for tag in policy.overrides)
        self._actions: dict[tuple, str] = {}
        self._listed: dict[int, bool] = {}
        self.types: dict[str, dict[int, str]] | None = None
        self.encoding: str | None = None  # the current file's single-byte character set, if it has one

    def listed(self, tag: int) -> bool:
        """Whether Table E.1-1 lists the attribute (cached: the table is searched by pattern too)."""
        found = self._listed.get(tag)
        if found is None:
            found = self._listed[tag] = self.profile.rule(tag) is not None
        return found

    def action(self, tag: int, private: bool, dataset: Dataset, nested: bool = False, vr: str = "") -> str:
        if private:
            return self._private_action(tag, dataset)
        key = (id(self.types), nested, tag, vr == "SQ")
        cached = self._actions.get(key)
        if cached is None:
            cached = self._standard_action(tag, nested, vr)
            self._actions[key] = cached
        return cached

    def _type_of(self, tag: int, nested: bool) -> str | None:
        return None if self.types is None else self.types["nested" if nested else "top"].get(tag)

    def _standard_action(self, tag: int, nested: bool, vr: str) -> str:
        kind = self._type_of(tag, nested)
        override = self.policy.overrides.get(f"{tag:08x}")
        if override:
            action = "D" if override == "X" and type_class(kind) == "1" and self.types is not None else override
        elif self.listed(tag):
            action = self.profile.action(tag, self.options, kind, self.types is not None)[0]
            if action == "C" and _repeating_group(tag) and (tag & 0xFFFF) == 0x3000:
                # Clean Graphics: nothing here reads an overlay or curve bitmap (burned-in text
                # can be drawn in it), so it goes with its plane, as in the basic profile.
                return "X"
        elif tag >> 16 == 0x0002:
            return "K"
        elif _repeating_group(tag) and (tag & 0xFFFF) != 0x3000:
            # An overlay (60xx) or curve (50xx) is one unit: its other attributes follow what the
            # table does to its data element (60xx,3000), or a removed overlay leaves a broken module.
            return "X" if self._standard_action((tag & 0xFFFF0000) | 0x3000, nested, "") == "X" else "K"
        else:
            known = dictionary_has_tag(tag) or repeater_has_tag(tag)  # 50xx/60xx groups are repeaters
            if tag in self.identifying_tags or not known:
                return "X"
            if (vr or dictionary_VR(tag)) != "PN" or tag in self.classified_kept:
                return "K"
            action = "X"  # a person's name the table does not list (e.g. Evaluator Name): removed as it lists names
        if action == "X" and type_class(kind) == "1" and self.types is not None:
            # Required here (Type 1/1C, e.g. an SR content item's TextValue): removing it would
            # make the instance invalid, so it gets a dummy (or, for a sequence, is cleaned).
            action = "C" if vr == "SQ" else "D"
        if vr == "SQ" and action in ("Z", "D") and type_class(kind) != "2":
            # An empty sequence is valid only where the IOD says Type 2; a dummy sequence
            # item would be invented content. Type 1 sequences are cleaned item by item.
            action = "C" if type_class(kind) == "1" and self.types is not None else "X"
        return action

    def _private_action(self, tag: int, dataset: Dataset) -> str:
        override = self.policy.overrides.get(f"{tag:08x}")
        if override:
            return override
        group, element = tag >> 16, tag & 0xFFFF
        if 0x0010 <= element <= 0x00FF:
            return "K"  # a private creator: dropped afterwards if its block ends up empty
        if not self.keep_private or "retain-safe-private" not in self.options:
            return "X"
        creator_tag = Tag(group, element >> 8)
        creator = str(dataset[creator_tag].value) if creator_tag in dataset else ""
        key = f"{creator},{group:04x},{element & 0xFF:02x}".lower()
        return "K" if key in self.keep_private and "retain-safe-private" in self.options else "X"

    def apply(self, ds: Dataset) -> Outcome:
        outcome = Outcome()
        patient_id = str(ds.get("PatientID", "") or "")
        self.shift = date_shift_days(self.keys.project, patient_id) if \
            "retain-longitudinal-modified-dates" in self.options else None
        self.patient_pseudonym = pseudonym(self.keys.patient, patient_id or "<no patient id>")
        self.types = load_iod_types().for_sop_class(str(ds.get("SOPClassUID", "") or ""))
        self.encoding = RAW_TEXT_ENCODINGS.get(str(ds.get("SpecificCharacterSet", "") or ""))
        self._survey(ds, outcome)  # first every identifying value, so cleaning can scrub them all
        self._walk(ds, outcome)
        self._mark(ds)
        if getattr(ds, "file_meta", None) is not None and "SOPInstanceUID" in ds:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        return outcome

    def _survey(self, dataset: Dataset, outcome: Outcome, nested: bool = False) -> None:
        for tag, vr, private in _entries(dataset):
            if tag in (PATIENT_ID, PATIENT_NAME) and f"{tag:08x}" not in self.policy.overrides:
                outcome.identifying.update(_strings(dataset[tag].value))
                continue
            if private and self.private_all_removed:
                if vr == "SQ":
                    for item in dataset[tag].value or []:
                        self._collect(item, outcome)
                elif vr in ("PN", "DA", "DT"):  # is_identifying for a tag without a keyword
                    outcome.identifying.update(_strings(dataset[tag].value))
                continue
            action = self.action(tag, private, dataset, nested, vr)
            if vr == "SQ":
                for item in dataset[tag].value or []:
                    (self._collect(item, outcome) if action in ("X", "Z") else self._survey(item, outcome, True))
            elif action == "K":
                # Kept on purpose: by the table or an option, classified by the policy, or a
                # standard coded/short attribute the table does not list (free text stays scanned).
                if vr in TEXT_VRS and (self.listed(tag) or tag in self.classified_kept or
                                       (not private and vr not in LONG_TEXT)):
                    outcome.retained.add(tag)
            elif action in ("X", "Z", "D", "C") and is_identifying(vr, tag):
                outcome.identifying.update(_strings(dataset[tag].value))

    def _walk(self, dataset: Dataset, outcome: Outcome, cleaning: bool = False, private_kept: bool = False,
              nested: bool = False) -> None:
        """`cleaning`: inside a sequence under C, free text that would be kept is scrubbed too.
        `private_kept`: inside a private sequence the policy keeps, its private content is kept."""
        any_private = False
        for tag, vr, private in _entries(dataset):
            if private and self.private_all_removed:
                del dataset[tag]
                outcome.actions["X"] += 1
                continue
            any_private |= private
            if tag in (PATIENT_ID, PATIENT_NAME) and f"{tag:08x}" not in self.policy.overrides:
                dataset[tag].value = self.patient_pseudonym
                outcome.actions["pseudonym"] += 1
                continue
            action = "K" if private_kept and private else self.action(tag, private, dataset, nested, vr)
            outcome.actions[action] += 1
            if vr == "SQ":
                self._sequence(dataset, dataset[tag], action, outcome, cleaning, private_kept or private)
                continue
            if action == "K" and cleaning and vr in FREE_TEXT and tag not in CODE_ATTRIBUTES:
                action = "C"
            if action == "K" and vr in LONG_TEXT and not private and self._unlisted_prose(tag):
                action = "C"  # prose the table does not list: a descriptor like any other
            if action == "K":
                if vr in DESCRIPTIVE and tag not in CODE_ATTRIBUTES:
                    on_purpose = private or self.listed(tag) or tag in self.classified_kept
                    if not self._may_hold_identifiers(dataset, tag, outcome, on_purpose):
                        continue  # nothing to scrub: left undecoded, written back as it was read
                    if on_purpose:
                        self._pattern_pass(dataset[tag])  # kept on purpose: identifiers no dictionary knows
                    else:  # kept only because the table does not list it: the file's own values go too
                        self._scrub_values(dataset[tag], outcome)
                continue
            if action == "C" and vr in DESCRIPTIVE and not self._descriptor_allowed(dataset[tag]):
                action = self._removal(tag, nested)
            if action == "X":
                del dataset[tag]
                continue
            elem = dataset[tag]
            if action == "Z":
                elem.value = None if elem.VR not in ("OB", "OW", "UN") else b""
            elif action == "D":
                elem.value = self._dummy(elem)
            elif action == "E":  # emptied text of a Type 1 attribute: a neutral dummy
                elem.value = "CLEANED"
            elif action == "U":
                elem.value = self._uids(elem.value)
            elif action == "C":
                self._clean(elem, outcome)
        if any_private:
            self._drop_empty_private_blocks(dataset)

    def _sequence(self, dataset: Dataset, elem: DataElement, action: str, outcome: Outcome, cleaning: bool,
                  private_kept: bool) -> None:
        if action in ("X", "Z"):
            if action == "X":
                del dataset[elem.tag]
            else:
                elem.value = Sequence([])
            return
        for item in elem.value or []:
            self._walk(item, outcome, cleaning or action == "C", private_kept, nested=True)

    def _may_hold_identifiers(self, dataset: Dataset, tag: int, outcome: Outcome, patterns_only: bool) -> bool:
        """False only when the raw text provably holds nothing to scrub: no identifier pattern
        and (unless `patterns_only`) none of the file's identifying values. The whole raw value
        holds every single value, so a value that would match matches here too."""
        text = _raw_text(dataset, tag, self.encoding)
        if text is None:
            return True
        if freetext.matches(text):
            return True
        if patterns_only:
            return False
        lowered = text.lower()
        return any(len(value) >= 3 and value.lower() in lowered for value in outcome.identifying)

    def _unlisted_prose(self, tag: int) -> bool:
        """Long text that Table E.1-1, the policy's classification and overrides all leave unsaid."""
        return ("clean-descriptors" in self.options and not self.listed(tag) and
                tag not in self.classified_kept and f"{tag:08x}" not in self.policy.overrides)

    def _descriptor_allowed(self, elem: DataElement) -> bool:
        return all(self.allow.allows(str(value)) for value in _as_list(elem.value) if value is not None)

    def _removal(self, tag: int, nested: bool) -> str:
        """A descriptor that is not allow-listed goes, as its Type in the IOD permits."""
        if self.types is None:
            return "Z"
        if not self.listed(tag):
            return "E"  # its Type is not in the table (only Table E.1-1 attributes are): a neutral dummy
        return {"1": "E", "2": "Z", "3": "X"}[type_class(self._type_of(tag, nested))]

    @staticmethod
    def _pattern_pass(elem: DataElement) -> None:
        values = _as_list(elem.value)
        cleaned = [freetext.scrub(str(v)) if v is not None else v for v in values]
        if cleaned != [str(v) if v is not None else v for v in values]:
            elem.value = cleaned if len(cleaned) != 1 else cleaned[0]

    def _scrub_values(self, elem: DataElement, outcome: Outcome) -> None:
        values = _as_list(elem.value)
        cleaned = [self._scrub(str(v), outcome) if v is not None else v for v in values]
        if cleaned != [str(v) if v is not None else v for v in values]:
            elem.value = cleaned if len(cleaned) != 1 else cleaned[0]

    def _collect(self, item: Dataset, outcome: Outcome) -> None:
        for tag, vr, _private in _entries(item):
            if vr == "SQ":
                for nested in item[tag].value or []:
                    self._collect(nested, outcome)
            elif is_identifying(vr, tag):
                outcome.identifying.update(_strings(item[tag].value))

    def _dummy(self, elem: DataElement):
        vr = elem.VR
        if vr == "DA":
            return shift_date(str(elem.value), self.shift) if self.shift is not None else "19000101"
        if vr == "DT":
            return shift_value(str(elem.value), self.shift, "DT") if self.shift is not None \
                else "19000101000000"
        if vr == "TM":
            return "000000"
        if vr == "UI":
            return self._uids(elem.value)
        if vr == "AS":
            return "000Y"
        if vr in NUMERIC_ZERO:
            return NUMERIC_ZERO[vr]
        if vr in ("OB", "OW", "UN", "OF", "OD", "OL"):
            return b""
        return "ANONYMIZED"

    def _uids(self, value):
        if value in (None, ""):
            return value
        if isinstance(value, (list, tuple, MultiValue)):
            return [new_uid(self.keys.project, str(v)) for v in value]
        return new_uid(self.keys.project, str(value))

    def _clean(self, elem: DataElement, outcome: Outcome) -> None:
        if elem.VR in ("DA", "DT") and self.shift is not None:
            shifted = [shift_value(str(v), self.shift, elem.VR) for v in _as_list(elem.value) if v]
            elem.value = shifted if len(shifted) != 1 else shifted[0]
        elif elem.VR in ("LO", "SH", "LT", "ST", "UT", "UC", "PN"):
            elem.value = self._scrub(str(elem.value or ""), outcome)
        # Other VRs under C (e.g. graphics data under Clean Graphics) are kept as they are.

    def _scrub(self, text: str, outcome: Outcome) -> str:
        """The file's own identifying values, then the identifier patterns."""
        cleaned = text
        for value in sorted(outcome.identifying, key=len, reverse=True):
            while len(value) >= 3 and value.lower() in cleaned.lower():
                start = cleaned.lower().index(value.lower())
                cleaned = cleaned[:start] + "***" + cleaned[start + len(value):]
        return freetext.scrub(cleaned)

    @staticmethod
    def _drop_empty_private_blocks(dataset: Dataset) -> None:
        """One pass: the blocks still in use, then every creator of an unused block dropped."""
        tags = [tag for tag in dataset.keys() if tag.is_private]
        used = {(tag.group, tag.element >> 8) for tag in tags if tag.element > 0x00FF}
        for tag in tags:
            if 0x0010 <= tag.element <= 0x00FF and (tag.group, tag.element) not in used:
                del dataset[tag]

    def _mark(self, ds: Dataset) -> None:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = f"medplat {self.policy.name}; {self.profile.source}"[:64]
        items = []
        for option in ["basic", *sorted(self.options)]:
            code, meaning = CID_7050[option]
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "DCM", meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
        ds.LongitudinalTemporalInformationModified = (
            "MODIFIED" if "retain-longitudinal-modified-dates" in self.options else
            "UNMODIFIED" if "retain-longitudinal-full-dates" in self.options else "REMOVED")


def leaks(ds: Dataset, outcome: Outcome) -> list[str]:
    """Identifying input values found anywhere in the output's text (private, nested, UN included).

    A value the policy keeps on purpose elsewhere (e.g. the manufacturer under Retain Device
    Identity) is not a leak; short values are skipped to avoid matching ordinary words.
    """
    needles = {v.lower() for v in outcome.identifying if (len(v) >= 4 and not v.isdigit() or len(v) >= 6)}
    hits: list[str] = []
    # Text still in its raw bytes is searched without decoding it into pydicom values (and so
    # written back raw, which is faster) when the character set decodes byte for byte.
    encoding = RAW_TEXT_ENCODINGS.get(str(ds.get("SpecificCharacterSet", "") or ""))

    def scan(dataset: Dataset, path: str) -> None:
        for tag, vr, _private in _entries(dataset):
            if tag in outcome.retained or tag in CODE_ATTRIBUTES or vr not in SCANNED_VRS:
                continue  # kept on purpose (e.g. Manufacturer under Retain Device Identity), a code, binary
            raw = dataset.get_item(tag)
            if encoding and vr in TEXT_VRS and isinstance(raw, RawDataElement) and isinstance(raw.value, bytes):
                text = raw.value.decode(encoding, "replace")
                if vr in DESCRIPTIVE and tag not in (PATIENT_ID, PATIENT_NAME):
                    hits.extend(f"{path}{Tag(tag)} holds a {kind}" for kind, _found in freetext.find(text))
                text = text.lower()
                hits.extend(f"{path}{Tag(tag)} contains {needle!r}" for needle in needles if needle in text)
                continue
            if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes) and \
                    (raw.VR == "CS" or raw.VR is None and vr == "CS" or raw.VR in ("OB", "UN") and len(raw.value) < 65536):
                # Codes and undecoded bytes read as pydicom would give them (CS is ASCII).
                text = raw.value.decode("latin-1", "ignore")
                if vr == "CS":
                    text = " ".join(part.strip() for part in text.split("\\") if part.strip())
                text = text.lower()
                hits.extend(f"{path}{Tag(tag)} contains {needle!r}" for needle in needles if needle in text)
                continue
            elem = dataset[tag]
            where = f"{path}{elem.tag}"
            if elem.VR == "SQ":
                for index, item in enumerate(elem.value or []):
                    scan(item, f"{where}[{index}].")
                continue
            if elem.VR in ("OB", "OW", "UN") and isinstance(elem.value, bytes) and len(elem.value) < 65536:
                text = elem.value.decode("latin-1", "ignore").lower()
            elif isinstance(elem.value, (bytes, bytearray)):
                continue
            else:
                text = " ".join(_strings(elem.value))
                if elem.VR in DESCRIPTIVE and tag not in (PATIENT_ID, PATIENT_NAME):
                    hits.extend(f"{where} holds a {kind}" for kind, _found in freetext.find(text))
                text = text.lower()
            for needle in needles:
                if needle in text:
                    hits.append(f"{where} contains {needle!r}")

    scan(ds, "")
    return hits
