"""`create_app`: one FastAPI shape for every workload (errors, health, docs)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from medplat import __version__
from medplat.service.fhir import FHIR_JSON, FhirError, operation_outcome


def _outcome(status: int, diagnostics: str, **kwargs: Any) -> JSONResponse:
    return JSONResponse(operation_outcome(status, diagnostics, **kwargs), status_code=status, media_type=FHIR_JSON)


def create_app(name: str, description: str, router: APIRouter, health: Callable[[], dict[str, Any]]) -> FastAPI:
    app = FastAPI(title=f"medplat {name}", description=description, version=__version__)

    @app.exception_handler(FhirError)
    async def _fhir_error(_request: Request, exc: FhirError) -> JSONResponse:
        return _outcome(exc.status_code, str(exc.detail), code=exc.code, expression=exc.expression)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _outcome(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if part != "body")
        return _outcome(422, f"{where}: {first['msg']}", code="invalid", expression=[where] if where else None)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "service": name, **health()}

    app.include_router(router)
    app.state.health_app = health_app(name, health)
    return app


def health_app(name: str, health: Callable[[], dict[str, Any]]) -> FastAPI:
    """The health endpoint alone, for the plain-HTTP probe listener."""
    app = FastAPI(title=f"medplat {name} health", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "service": name, **health()}

    return app
