"""De-identification policies (YAML), one per intended use: profile options, attribute
classification, overrides, private attributes to keep, quarantine rules and k-anonymity."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medplat.workloads.dicom_anonymizer.profile import OPTIONS

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


class KAnonymity(_Strict):
    k: int = Field(1, ge=1)
    suppression_limit: float = Field(0.0, alias="suppressionLimit", ge=0, le=1)
    quasi_identifiers: list[str] = Field(default_factory=list, alias="quasiIdentifiers")


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
        return self

    @property
    def option_set(self) -> frozenset[str]:
        return frozenset(self.options)


def load_policy(path_or_name: str | Path) -> Policy:
    """A policy file, or the name of a shipped one (research-export, teleradiology)."""
    path = Path(path_or_name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        text = path.read_text(encoding="utf-8")
    else:
        package = __name__.rsplit(".", 1)[0]
        shipped = resources.files(package) / "policies" / f"{path_or_name}.yaml"
        if not shipped.is_file():
            raise FileNotFoundError(f"no policy file {path_or_name!r} and no shipped policy of that name")
        text = shipped.read_text(encoding="utf-8")
    return Policy.model_validate(yaml.safe_load(text))
