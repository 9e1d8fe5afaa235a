"""dicom-anonymizer service: one instance or a zip per request, batch jobs over the mounted
folder, run reports. The same library as `medplat anonymize`. Scope: anonymize.run.

Secure by default: policies are chosen by name among those the service is configured with
(never a caller's file path); uploads are bounded while they stream in, archives by member
count, total uncompressed size and compression ratio; the de-identification itself runs in a
worker thread so health and other requests stay responsive; temporary files live in one
folder per request that is removed whatever happens; every run is audited (BALP).

At scale the batch work runs as Kubernetes indexed Jobs (one shard per study range) from the
Workload spec's `batch` section; each pod runs `medplat anonymize` on its shard.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
import threading
import uuid
import zipfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from medplat.service.app import create_app
from medplat.service.audit import AuditClient, balp_event
from medplat.service.auth import Authenticator, Principal
from medplat.service.fhir import FhirError
from medplat.service.settings import ServiceSettings, service_config
from medplat.service.tls import serve
from medplat.workloads.dicom_anonymizer.keystore import keys_for, open_store
from medplat.workloads.dicom_anonymizer.policy import Policy, load_named_policy
from medplat.workloads.dicom_anonymizer.run import REPORT, RELEASED, anonymize_tree

NAME = "dicom-anonymizer"


class Settings(ServiceSettings):
    model_config = service_config(NAME)
    port: int = 8040
    policy: str = "research-export"  # the default among `policies`
    policies: list[str] = Field(default_factory=lambda: ["research-export", "teleradiology"])
    policy_dir: Path | None = None  # site policies (<name>.yaml), looked up by name only
    keys: Path | None = None  # default <data_dir>/keys
    batch_root: Path | None = None  # the mounted folder batch jobs may read and write under
    workers: int = Field(1, ge=1)
    max_upload: int = Field(512 << 20, ge=1)  # bytes of one request body
    max_members: int = Field(10_000, ge=1)  # files in one archive
    max_extracted: int = Field(2 << 30, ge=1)  # total uncompressed bytes of one archive
    max_ratio: float = Field(200.0, gt=1)  # uncompressed / compressed, per archive


class JobRequest(BaseModel):
    source: str = Field(description="folder under the batch root")
    output: str = Field(description="folder under the batch root")
    policy: str | None = Field(None, description="name of a configured policy")


async def spool_body(request: Request, target: Path, limit: int) -> int:
    """Stream the body to `target`, refusing it (413) as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise FhirError(413, f"request body larger than {limit} bytes")
    size = 0
    with target.open("wb") as sink:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise FhirError(413, f"request body larger than {limit} bytes")
            sink.write(chunk)
    if size == 0:
        raise FhirError(400, "empty body")
    return size


def extract_bounded(archive: Path, target: Path, settings: Settings) -> int:
    """Extract a zip within the service's limits, counting real bytes (declared sizes can lie)."""
    try:
        bundle = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise FhirError(400, "body is not a zip archive") from None
    with bundle:
        members = [m for m in bundle.infolist() if not m.is_dir()]
        if len(members) > settings.max_members:
            raise FhirError(413, f"archive has more than {settings.max_members} files")
        budget = min(settings.max_extracted, int(archive.stat().st_size * settings.max_ratio))
        root, written = target.resolve(), 0
        for member in members:
            destination = (root / member.filename).resolve()
            if not destination.is_relative_to(root) or destination == root:
                raise FhirError(400, "an archive member escapes the archive")
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                with bundle.open(member) as source, destination.open("wb") as sink:
                    while chunk := source.read(1 << 20):
                        written += len(chunk)
                        if written > budget:
                            raise FhirError(413, "archive expands beyond the service's size or ratio limit")
                        sink.write(chunk)
            except (zipfile.BadZipFile, NotImplementedError, EOFError) as exc:
                raise FhirError(400, f"archive member cannot be extracted: {type(exc).__name__}") from None
        return len(members)


def answer_report(report: dict[str, Any], out: Path) -> dict[str, Any]:
    """The run report as the caller gets it: outputs relative to the answer, no server path."""
    results = []
    for result in report.get("results", []):
        output = result.get("output") or ""
        inside = Path(output).is_relative_to(out) if output else False
        results.append({**result, "output": Path(output).relative_to(out).as_posix() if inside else ""})
    return {**report, "results": results}


def build(settings: Settings | None = None):
    settings = settings or Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    auth = Authenticator(NAME, settings)
    audit = AuditClient.for_service(settings)
    store = open_store(settings.keys or settings.data_dir / "keys")
    store_lock = threading.Lock()
    jobs: dict[str, dict[str, Any]] = {}
    router = APIRouter()

    def policy_and_keys(name: str | None) -> tuple[Policy, Any]:
        chosen = name or settings.policy
        if chosen not in settings.policies:
            raise FhirError(422, "unknown policy; the service runs only its configured policies",
                            expression=["policy"])
        policy = load_named_policy(chosen, settings.policy_dir)
        with store_lock:
            return policy, keys_for(store, policy.patient_id_domain)

    def audited(principal: Principal, policy: Policy, report: dict[str, Any] | None, failure: str = "") -> None:
        summary = (f"policy {policy.name}: {report['anonymized']} released, {report['held']} held, "
                   f"{report['quarantined']} quarantined of {report['files']}") if report else failure
        audit.record(balp_event("execute", source=NAME, agent=principal.subject, purpose="HRESCH"
                                if policy.k_anonymity.k > 1 else None, outcome="0" if report else "8",
                                description=f"DICOM de-identification; {summary}"[:1000]))

    def cohort_state(principal: Principal) -> Path:
        """One cohort per caller: files held back for k-anonymity are released only to the caller
        who sent them (hashed: a subject is not a safe folder name)."""
        return settings.data_dir / "cohorts" / hashlib.sha256(principal.subject.encode()).hexdigest()[:32]

    def scratch() -> Path:
        return Path(tempfile.mkdtemp(prefix="deid-", dir=settings.data_dir))

    @router.post("/instances", tags=["anonymize"], response_class=Response,
                 responses={200: {"content": {"application/dicom": {}}}})
    async def instance(request: Request, policy: str | None = None,
                       principal: Principal = Depends(auth.require("anonymize.run"))) -> Response:
        """Anonymize one DICOM instance (body: application/dicom); 400 if it is not a complete
        instance, 422 with the reason if quarantined."""
        chosen, keys = policy_and_keys(policy)
        if chosen.k_anonymity.k > 1:
            raise FhirError(422, f"policy {chosen.name} needs cohort k-anonymity: send a batch (/archives, /jobs)")
        folder = scratch()
        try:
            source = folder / "in" / "instance.dcm"
            source.parent.mkdir()
            await spool_body(request, source, settings.max_upload)

            def work() -> dict[str, Any]:
                return anonymize_tree(source, folder / "out", chosen, keys)

            report = await run_in_threadpool(work)
            audited(principal, chosen, report)
            result = report["results"][0]
            if result["status"] != "anonymized":
                unreadable = result["reason"].startswith("cannot be read")
                raise FhirError(400 if unreadable else 422, f"quarantined: {result['reason']}"[:500],
                                code="invalid" if unreadable else "security")
            return Response(Path(result["output"]).read_bytes(), media_type="application/dicom")
        finally:
            await run_in_threadpool(shutil.rmtree, folder, True)

    @router.post("/archives", tags=["anonymize"], response_class=Response,
                 responses={200: {"content": {"application/zip": {}}}})
    async def archive(request: Request, policy: str | None = None,
                      principal: Principal = Depends(auth.require("anonymize.run"))) -> Response:
        """Anonymize a zip of DICOM files; answers a zip with the released tree and the run report."""
        chosen, keys = policy_and_keys(policy)
        folder = scratch()
        try:
            upload = folder / "upload.zip"
            await spool_body(request, upload, settings.max_upload)

            def work() -> tuple[bytes, dict[str, Any]]:
                extract_bounded(upload, folder / "in", settings)
                upload.unlink()
                out = folder / "out"
                report = anonymize_tree(folder / "in", out, chosen, keys, workers=settings.workers,
                                        state=cohort_state(principal))
                buffer = io.BytesIO()
                with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as result:
                    for path in sorted((out / RELEASED).rglob("*")):
                        if path.is_file():
                            result.write(path, path.relative_to(out).as_posix())
                    result.writestr(REPORT, json.dumps(answer_report(report, out), indent=2))
                return buffer.getvalue(), report

            body, report = await run_in_threadpool(work)
            audited(principal, chosen, report)
            return Response(body, media_type="application/zip")
        finally:
            await run_in_threadpool(shutil.rmtree, folder, True)

    def under_root(relative: str) -> Path:
        if settings.batch_root is None:
            raise FhirError(409, "no batch root is mounted (MEDPLAT_DICOM_ANONYMIZER_BATCH_ROOT)", code="not-supported")
        root = settings.batch_root.resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root) or path == root:
            raise FhirError(400, "the folder must be inside the batch root")
        return path

    @router.post("/jobs", status_code=202, tags=["batch"])
    def start_job(body: JobRequest, principal: Principal = Depends(auth.require("anonymize.run"))) -> dict[str, Any]:
        """Anonymize a folder under the batch root in the background; poll GET /jobs/{id}."""
        chosen, keys = policy_and_keys(body.policy)
        source, output = under_root(body.source), under_root(body.output)
        job_id = uuid.uuid4().hex
        jobs[job_id] = {"id": job_id, "status": "running", "source": body.source, "output": body.output,
                        "owner": principal.subject}

        def run() -> None:
            if not source.is_dir():  # reported by the job, the same way whether or not it exists
                jobs[job_id].update(status="failed", error="source is not a readable folder under the batch root")
                audited(principal, chosen, None, "failed: source not readable")
                return
            try:
                report = anonymize_tree(source, output, chosen, keys, workers=settings.workers,
                                        state=cohort_state(principal))
                jobs[job_id].update(status="done", report={k: v for k, v in report.items() if k != "results"})
                audited(principal, chosen, report)
            except Exception as exc:  # the job's failure is its result
                jobs[job_id].update(status="failed", error=type(exc).__name__)
                audited(principal, chosen, None, f"failed: {type(exc).__name__}")

        threading.Thread(target=run, name=f"job-{job_id}", daemon=True).start()
        return jobs[job_id]

    @router.get("/jobs/{job_id}", tags=["batch"])
    def get_job(job_id: str, _p: Principal = Depends(auth.require("anonymize.run"))) -> dict[str, Any]:
        if job_id not in jobs:
            raise FhirError(404, "no such job")
        return jobs[job_id]

    def health() -> dict[str, Any]:
        return {"policy": settings.policy, "jobs": len(jobs)}

    app = create_app(NAME, __doc__.strip().splitlines()[0], router, health, settings=settings,
                     max_body_bytes=settings.max_upload)  # its own streamed limit applies to uploads
    app.state.jobs = jobs
    app.state.audit = audit
    return app, settings


def main() -> None:
    app, settings = build()
    serve(app, settings)
