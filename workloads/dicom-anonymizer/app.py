"""dicom-anonymizer service: one instance or a zip per request, batch jobs over the mounted
folder, run reports. The same library as `medplat anonymize`. Scope: anonymize.run.

At scale the batch work runs as Kubernetes indexed Jobs (one shard per study range) from the
Workload spec's `job` section; each pod runs `medplat anonymize` on its shard.
"""
from __future__ import annotations

import io
import tempfile
import threading
import uuid
import zipfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from medplat.service.app import create_app
from medplat.service.auth import Authenticator, Principal
from medplat.service.fhir import FhirError
from medplat.service.settings import ServiceSettings, service_config
from medplat.service.tls import serve
from medplat.workloads.dicom_anonymizer.keystore import keys_for, open_store
from medplat.workloads.dicom_anonymizer.policy import load_policy
from medplat.workloads.dicom_anonymizer.run import anonymize_tree

NAME = "dicom-anonymizer"
MAX_UPLOAD = 2 << 30


class Settings(ServiceSettings):
    model_config = service_config(NAME)
    port: int = 8040
    policy: str = "research-export"
    keys: Path | None = None  # default <data_dir>/keys
    batch_root: Path | None = None  # the mounted folder batch jobs may read and write under
    workers: int = Field(1, ge=1)


class JobRequest(BaseModel):
    source: str = Field(description="folder under the batch root")
    output: str = Field(description="folder under the batch root")
    policy: str | None = None


def build(settings: Settings | None = None):
    settings = settings or Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    auth = Authenticator(NAME, settings)
    store = open_store(settings.keys or settings.data_dir / "keys")
    jobs: dict[str, dict[str, Any]] = {}
    router = APIRouter()

    def policy_and_keys(name: str | None):
        try:
            policy = load_policy(name or settings.policy)
        except (OSError, ValueError) as exc:
            raise FhirError(422, f"policy: {str(exc).splitlines()[0]}", expression=["policy"]) from None
        return policy, keys_for(store, policy.patient_id_domain)

    async def body_of(request: Request) -> bytes:
        data = await request.body()
        if not data:
            raise FhirError(400, "empty body")
        if len(data) > MAX_UPLOAD:
            raise FhirError(413, "upload too large")
        return data

    @router.post("/instances", tags=["anonymize"], response_class=Response,
                 responses={200: {"content": {"application/dicom": {}}}})
    async def instance(request: Request, policy: str | None = None,
                       _p: Principal = Depends(auth.require("anonymize.run"))) -> Response:
        """Anonymize one DICOM instance (body: application/dicom); 422 with the reason if quarantined."""
        data = await body_of(request)
        chosen, keys = policy_and_keys(policy)
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "in" / "instance.dcm"
            source.parent.mkdir()
            source.write_bytes(data)
            report = anonymize_tree(source, Path(tmp) / "out", chosen, keys)
            result = report["results"][0]
            if result["status"] != "anonymized":
                raise FhirError(422, f"quarantined: {result['reason']}", code="security")
            return Response(Path(result["output"]).read_bytes(), media_type="application/dicom")

    @router.post("/archives", tags=["anonymize"], response_class=Response,
                 responses={200: {"content": {"application/zip": {}}}})
    async def archive(request: Request, policy: str | None = None,
                      _p: Principal = Depends(auth.require("anonymize.run"))) -> Response:
        """Anonymize a zip of DICOM files; answers a zip with the output tree, quarantine and report."""
        data = await body_of(request)
        chosen, keys = policy_and_keys(policy)
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "in"
            try:
                with zipfile.ZipFile(io.BytesIO(data)) as bundle:
                    for member in bundle.infolist():
                        target = (source / member.filename).resolve()
                        if not target.is_relative_to(source.resolve()):
                            raise FhirError(400, f"zip member {member.filename!r} escapes the archive")
                    bundle.extractall(source)
            except zipfile.BadZipFile:
                raise FhirError(400, "body is not a zip archive") from None
            out = Path(tmp) / "out"
            anonymize_tree(source, out, chosen, keys, workers=settings.workers)
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as result:
                for path in sorted(out.rglob("*")):
                    if path.is_file():
                        result.write(path, path.relative_to(out).as_posix())
            return Response(buffer.getvalue(), media_type="application/zip")

    def under_root(relative: str) -> Path:
        if settings.batch_root is None:
            raise FhirError(409, "no batch root is mounted (MEDPLAT_DICOM_ANONYMIZER_BATCH_ROOT)", code="not-supported")
        root = settings.batch_root.resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise FhirError(400, f"{relative!r} is outside the batch root")
        return path

    @router.post("/jobs", status_code=202, tags=["batch"])
    def start_job(body: JobRequest, _p: Principal = Depends(auth.require("anonymize.run"))) -> dict[str, Any]:
        """Anonymize a folder under the batch root in the background; poll GET /jobs/{id}."""
        source, output = under_root(body.source), under_root(body.output)
        if not source.exists():
            raise FhirError(404, f"{body.source!r} does not exist under the batch root")
        chosen, keys = policy_and_keys(body.policy)
        job_id = uuid.uuid4().hex
        jobs[job_id] = {"id": job_id, "status": "running", "source": body.source, "output": body.output}

        def run() -> None:
            try:
                report = anonymize_tree(source, output, chosen, keys, workers=settings.workers)
                jobs[job_id].update(status="done", report=report)
            except Exception as exc:  # the job's failure is its result
                jobs[job_id].update(status="failed", error=f"{type(exc).__name__}: {exc}")

        threading.Thread(target=run, name=f"job-{job_id}", daemon=True).start()
        return jobs[job_id]

    @router.get("/jobs/{job_id}", tags=["batch"])
    def get_job(job_id: str, _p: Principal = Depends(auth.require("anonymize.run"))) -> dict[str, Any]:
        if job_id not in jobs:
            raise FhirError(404, f"no job {job_id}")
        return jobs[job_id]

    def health() -> dict[str, Any]:
        return {"policy": settings.policy, "jobs": len(jobs)}

    app = create_app(NAME, __doc__.strip().splitlines()[0], router, health, settings=settings)
    app.state.jobs = jobs
    return app, settings


def main() -> None:
    app, settings = build()
    serve(app, settings)
