"""CycloneDX 1.6 SBOMs: the platform's own environment, and one per workload image.

Generated with cyclonedx-bom (`cyclonedx-py`) / cyclonedx-python-lib and validated with the
library's strict JSON validator. The platform SBOM also lists every workload as a service
with its data flows (data classes in and out) and trust zone.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from medplat import __version__
from medplat.components.workload_spec import WorkloadSpec
from medplat.evidence.clock import iso

SPEC = "1.6"
NAMESPACE = uuid.UUID("5f0c8a59-9d0b-4c52-9a87-0f6c4b9b3e11")  # medplat SBOM serial numbers (uuid5)
TRUST_ZONES = {"edge": "hospital-edge", "eu-phi": "eu-phi-zone", "analytics": "deidentified-analytics-zone"}


class SbomError(Exception):
    pass


def validate(text: str) -> None:
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        raise SbomError(f"CycloneDX {SPEC} validation failed: {error}")


def _finish(document: dict[str, Any], moment) -> str:
    document.setdefault("metadata", {})["timestamp"] = iso(moment)
    body = json.dumps({k: v for k, v in document.items() if k != "serialNumber"}, sort_keys=True)
    document["serialNumber"] = f"urn:uuid:{uuid.uuid5(NAMESPACE, body)}"
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    validate(text)
    return text


def platform_sbom(specs: list[WorkloadSpec], images: dict[str, str], moment) -> str:
    """The running environment (cyclonedx-py) plus the workloads as services."""
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "env.cdx.json"
        completed = subprocess.run([sys.executable, "-m", "cyclonedx_py", "environment", "--sv", SPEC, "--of", "JSON",
                                    "--output-reproducible", "-o", str(target)], capture_output=True, text=True)
        if completed.returncode != 0:
            raise SbomError(f"cyclonedx-py failed: {completed.stderr.strip()[-300:]}")
        document = json.loads(target.read_text())
    metadata = document.setdefault("metadata", {})
    metadata["component"] = {"type": "application", "name": "medplat", "version": __version__,
                             "bom-ref": "medplat", "description": "medplat platform (IaC, policies, evidence)"}
    document["components"] = sorted(document.get("components", []), key=lambda c: (c.get("name", ""), c.get("version", "")))
    document["services"] = [_service(spec, images.get(spec.name)) for spec in sorted(specs, key=lambda s: s.name)]
    return _finish(document, moment)


def _service(spec: WorkloadSpec, image: str | None) -> dict[str, Any]:
    flows = [{"flow": "inbound", "classification": c} for c in spec.data_classes.reads] + \
            [{"flow": "outbound", "classification": c} for c in spec.data_classes.writes]
    return {
        "bom-ref": f"service:{spec.name}",
        "name": spec.name,
        "description": spec.description,
        "authenticated": bool(spec.secrets) or "@edge-sites" in spec.network.ingress_from,
        "x-trust-boundary": bool({"@cloud", "@edge-sites", "@devices"} &
                                 set(spec.network.ingress_from + spec.network.egress_to)),
        "trustZone": ",".join(TRUST_ZONES[z] for z in spec.zones),
        "data": flows,
        "properties": [
            {"name": "medplat:image", "value": image or spec.image},
            {"name": "medplat:roles", "value": ",".join(spec.roles)},
            {"name": "medplat:zones", "value": ",".join(spec.zones)},
            {"name": "medplat:egress", "value": ",".join(spec.network.egress_to)},
            {"name": "medplat:ingress", "value": ",".join(spec.network.ingress_from)},
        ],
    }


def workload_sbom(spec: WorkloadSpec, image: str, lock_file: Path | None, placeholder: bool, moment) -> str:
    """One workload image: the image as the subject, its locked Python requirements as components."""
    components: list[dict[str, Any]] = []
    if lock_file is not None and lock_file.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "req.cdx.json"
            completed = subprocess.run([sys.executable, "-m", "cyclonedx_py", "requirements", "--sv", SPEC, "--of",
                                        "JSON", "--output-reproducible", "-o", str(target), str(lock_file)],
                                       capture_output=True, text=True)
            if completed.returncode != 0:
                raise SbomError(f"cyclonedx-py failed on {lock_file}: {completed.stderr.strip()[-300:]}")
            components = json.loads(target.read_text()).get("components", [])
    repository, _, digest = image.partition("@")
    name = repository.rsplit("/", 1)[-1]
    document = {
        "bomFormat": "CycloneDX", "specVersion": SPEC, "version": 1,
        "metadata": {
            "component": {"type": "container", "bom-ref": f"image:{spec.name}", "name": name, "version": digest,
                          "purl": f"pkg:oci/{name}@{digest.replace(':', '%3A')}?repository_url={repository}",
                          "description": spec.description},
            "properties": [
                {"name": "medplat:workload", "value": spec.name},
                {"name": "medplat:image-published", "value": "false" if placeholder else "true"},
                {"name": "medplat:dependencies",
                 "value": "locked requirements" if components else
                 f"no workloads/{spec.name}/requirements.lock yet: dependencies not listed"},
            ],
        },
        "components": sorted(components, key=lambda c: (c.get("name", ""), c.get("version", ""))),
    }
    return _finish(document, moment)
