"""De-identification policies (YAML), one per intended use: profile options, attribute
classification, overrides, private attributes to keep, quarantine rules and k-anonymity."""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medplat.workloads.dicom_anonymizer.profile import OPTIONS, load_profile


def device_identity_tags() -> set[int]:
    """The attributes Table E.1-1 keeps under the Retain Device Identity Option."""
    profile = load_profile()
    return {tag for tag, rule in profile.attributes.items() if "retain-device-identity" in rule.options}

Classification = Literal["identifying", "quasi-identifying", "sensitive", "insensitive"]
Action = Literal["K", "X", "Z", "D", "C", "U"]


def _tag(value: str) -> str:
    digits = value.replace("(", "").replace(")", "").replace(",", "").strip().lower()
    if len(digits) != 8 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"{value!r} is not a tag like 0010,0040")
    return digits


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Quarantine(_Strict):
    burned_in_annotation: bool = Field(True, alias="burnedInAnnotation")
    secondary_capture: bool = Field(True, alias="secondaryCapture")
    # Modalities whose pixels commonly carry burned-in text (PS3.15 E.1.1 Clean Pixel Data).
    modalities: list[str] = Field(default_factory=lambda: ["US", "ES", "XC", "SC", "OT", "DOC", "GM", "SM"])


class Pixels(_Strict):
    """Burned-in text: clean the pixels of files at risk instead of quarantining them."""
    enabled: bool = False
    # RSNA CTP DicomPixelAnonymizer scripts (shipped under pixel-rules/, chosen by file name).
    scripts: list[str] = Field(default_factory=lambda: ["ctp-curated"])
    ocr: bool = True
    # Where any text is redacted unless allow-listed (ultrasound, screen captures carry
    # free-form overlays); elsewhere OCR redacts text matching the header's identifying values.
    redact_all_text: list[str] = Field(default_factory=lambda: ["US", "SC", "OT"], alias="redactAllText")
    allow_text: list[str] = Field(default_factory=list, alias="allowText",
                                  description="words kept when all text is redacted (e.g. probe labels)")


class FreeText(_Strict):
    """Clean Descriptors: text under C is removed unless allow-listed; kept text is pattern-scrubbed."""
    allow_values: list[str] = Field(default_factory=list, alias="allowValues",
                                    description="regular expressions a whole value may match to be kept")
    allow_words: list[str] = Field(default_factory=list, alias="allowWords",
                                   description="a value made only of these words and short numbers is kept")


class DeviceIdentity(_Strict):
    """One rule for every attribute that identifies the acquiring device (those Table E.1-1
    lists under the Retain Device Identity Option: serial number, station name, detector ID,
    device UID, ...): kept together under the option, or handled together by the basic profile."""
    retain: bool
    rationale: str = Field(min_length=20, description="why this intended use keeps or drops device identity")


class KAnonymity(_Strict):
    k: int = Field(1, ge=1)
    suppression_limit: float = Field(0.0, alias="suppressionLimit", ge=0, le=1)
    quasi_identifiers: list[str] = Field(default_factory=list, alias="quasiIdentifiers")
    # l-diversity: each released class holds at least `lDiversity` distinct values of this attribute.
    sensitive_attribute: str | None = Field(None, alias="sensitiveAttribute")
    l_diversity: int = Field(1, alias="lDiversity", ge=1)


class Policy(_Strict):
    name: str
    intended_use: str = Field(alias="intendedUse")
    options: list[str] = Field(default_factory=list)
    patient_id_domain: str = Field(alias="patientIdDomain")
    classification: dict[str, Classification] = Field(default_factory=dict)
    overrides: dict[str, Action] = Field(default_factory=dict)
    keep_private: list[str] = Field(default_factory=list, alias="keepPrivate",
                                    description="private attributes to keep: 'Private Creator,gggg,xxee'")
    quarantine: Quarantine = Field(default_factory=Quarantine)
    k_anonymity: KAnonymity = Field(default_factory=KAnonymity, alias="kAnonymity")
    pixels: Pixels = Field(default_factory=Pixels)
    free_text: FreeText = Field(default_factory=FreeText, alias="freeText")
    device_identity: DeviceIdentity | None = Field(None, alias="deviceIdentity")

    @field_validator("options")
    @classmethod
    def _options(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(OPTIONS))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}; known: {list(OPTIONS)}")
        return value

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, value: dict[str, str]) -> dict[str, str]:
        return {_tag(tag): action for tag, action in value.items()}

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        dates = {"retain-longitudinal-full-dates", "retain-longitudinal-modified-dates"}
        if dates <= set(self.options):
            raise ValueError("choose one of the two Retain Longitudinal Temporal Information options")
        if self.device_identity is not None and \
                self.device_identity.retain != ("retain-device-identity" in self.options):
            raise ValueError("deviceIdentity.retain and the retain-device-identity option disagree")
        device_tags = {f"{tag:08x}" for tag in device_identity_tags()}
        split = sorted(set(self.overrides) & device_tags)
        if split:
            raise ValueError(f"overrides {split} would treat device-identity attributes unlike the others; "
                             "use deviceIdentity for all of them")
        return self

    @property
    def option_set(self) -> frozenset[str]:
        return frozenset(self.options)


POLICY_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


def load_named_policy(name: str, folder: Path | None = None) -> Policy:
    """A policy by name only (services): a site folder's `<name>.yaml`, else a shipped one.
    The name is never taken as a path."""
    if not POLICY_NAME.fullmatch(name):
        raise ValueError("a policy name is lower-case letters, digits and hyphens")
    if folder is not None and (folder / f"{name}.yaml").is_file():
        return Policy.model_validate(yaml.safe_load((folder / f"{name}.yaml").read_text(encoding="utf-8")))
    return load_policy(name, shipped_only=True)


def load_policy(path_or_name: str | Path, shipped_only: bool = False) -> Policy:
    """A policy file, or the name of a shipped one (research-export, teleradiology)."""
    path = Path(path_or_name)
    if not shipped_only and (path.suffix in (".yaml", ".yml") or path.exists()):
        text = path.read_text(encoding="utf-8")
    else:
        package = __name__.rsplit(".", 1)[0]
        shipped = resources.files(package) / "policies" / f"{path_or_name}.yaml"
        if not shipped.is_file():
            raise FileNotFoundError(f"no policy file {path_or_name!r} and no shipped policy of that name")
        text = shipped.read_text(encoding="utf-8")
    return Policy.model_validate(yaml.safe_load(text))
