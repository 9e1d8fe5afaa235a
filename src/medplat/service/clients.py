"""Calling another medplat service: one bearer token, one httpx client, errors as FhirError."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from medplat.service.fhir import FhirError


class ServiceClient:
    def __init__(self, base_url: str, *, token: str | None = None, token_file: Path | None = None,
                 client: httpx.Client | None = None, name: str = "service") -> None:
        self.base_url, self.name = base_url.rstrip("/"), name
        self.token, self.token_file = token, token_file
        self.client = client or httpx.Client(timeout=30)

    def _headers(self) -> dict[str, str]:
        # Re-read the file per call: the platform rotates service tokens in place.
        token = self.token_file.read_text().strip() if self.token_file else self.token
        return {"authorization": f"Bearer {token}"} if token else {}

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", path, json=body)

    def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        return self._call("GET", path, params=params)

    def _call(self, method: str, path: str, **options: Any) -> dict[str, Any]:
        try:
            response = self.client.request(method, f"{self.base_url}{path}", headers=self._headers(), **options)
        except httpx.HTTPError as exc:
            raise FhirError(503, f"{self.name} unreachable: {exc}", code="transient") from None
        if response.status_code != 200:
            raise FhirError(502, f"{self.name} answered {response.status_code}: {response.text[:300]}",
                            code="exception")
        return response.json()
