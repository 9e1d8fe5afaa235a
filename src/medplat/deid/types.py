"""FHIR R4 element types from fhir.resources' R4B models, so `nodesByType` and choice
elements resolve without a hand-written schema. One lookup table per model class, built once."""
from __future__ import annotations

import functools
import typing
from dataclasses import dataclass

from fhir.resources.R4B import get_fhir_model_class

PRIMITIVE_BY_PYTHON = {bool: "boolean", int: "integer", float: "decimal", str: "string"}
RESOURCE = "Resource"


@dataclass(frozen=True)
class Field:
    element: str       # FHIRPath name: "value" for valueQuantity
    type: str          # FHIR type: "Quantity", "dateTime", "Resource", "Element" (for _primitive)
    repeats: bool


def _unwrap(annotation) -> tuple[object, bool]:
    repeats = False
    while True:
        origin = typing.get_origin(annotation)
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if origin in (list, typing.List):
            repeats, annotation = True, args[0]
        elif origin is typing.Annotated:
            return annotation, repeats
        elif args and origin is not None:  # Optional / Union
            annotation = args[0]
        else:
            return annotation, repeats


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) is typing.Annotated:
        markers = typing.get_args(annotation)[1:]
        marker = next((m for m in reversed(markers) if type(m).__module__.startswith("fhir")), markers[-1])
        name = type(marker).__name__
        return name[0].lower() + name[1:]
    if annotation in PRIMITIVE_BY_PYTHON:
        return PRIMITIVE_BY_PYTHON[annotation]
    name = getattr(annotation, "__name__", str(annotation))
    name = name.removesuffix("Type")
    return "Element" if name == "FHIRPrimitiveExtension" else name


@functools.lru_cache(maxsize=None)
def fields_of(type_name: str) -> dict[str, Field]:
    """JSON key -> Field for a complex type or resource; {} for primitives and unknown types."""
    try:
        model = get_fhir_model_class(type_name)
    except (KeyError, ValueError):
        return {}
    table = {}
    for name, info in model.model_fields.items():
        if name == "fhir_comments" or info.alias is None and name.endswith("__ext"):
            continue
        annotation, repeats = _unwrap(info.annotation)
        key = info.alias or name
        extra = info.json_schema_extra or {}
        element = extra.get("one_of_many") or (key[1:] if key.startswith("_") else key)
        table[key] = Field(element, _type_name(annotation), repeats)
    return table


def is_resource_type(name: str) -> bool:
    return "implicitRules" in fields_of(name)
