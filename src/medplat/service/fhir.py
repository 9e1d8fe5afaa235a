"""Errors as FHIR R4 OperationOutcome resources (built with fhir.resources' R4B models)."""
from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from fhir.resources.R4B.operationoutcome import OperationOutcome

FHIR_JSON = "application/fhir+json"
# HTTP status -> FHIR issue-type code (http://hl7.org/fhir/issue-type)
ISSUE_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
               409: "conflict", 413: "too-costly", 415: "not-supported", 422: "processing", 429: "throttled",
               500: "exception", 503: "transient"}


class FhirError(HTTPException):
    """An HTTP error whose body is an OperationOutcome."""

    def __init__(self, status: int, diagnostics: str, *, code: str | None = None,
                 expression: list[str] | None = None) -> None:
        super().__init__(status_code=status, detail=diagnostics)
        self.code = code or ISSUE_CODES.get(status, "processing")
        self.expression = expression


def operation_outcome(status: int, diagnostics: str, code: str | None = None,
                      expression: list[str] | None = None, severity: str | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {
        "severity": severity or ("error" if status < 500 else "fatal"),
        "code": code or ISSUE_CODES.get(status, "processing"),
        "diagnostics": diagnostics,
    }
    if expression:
        issue["expression"] = expression
    return OperationOutcome.model_validate({"resourceType": "OperationOutcome", "issue": [issue]}).model_dump(
        mode="json", exclude_none=True)


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A FHIR searchset Bundle of stored resources, each entry's fullUrl `Type/id`."""
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r} for r in resources]}
