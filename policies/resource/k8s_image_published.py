"""Images are published and signed: no placeholder digest, a recorded signature verification."""
import json
import re

from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatResourcePolicy
from medplat.policies.lib import WORKLOAD_KINDS, containers, has_pod, pod_spec

ECS_TASK = "aws:ecs/taskDefinition:TaskDefinition"
META = Meta(
    id="k8s-image-published",
    description="Workload images (Kubernetes pods and ECS tasks) are not placeholders: the digest is not a "
                "repeated digit, the lock entry is not marked placeholder, and a signature verification is "
                "recorded for it in workloads/images.lock.yaml.",
    severity=Severity.HIGH,
    rationale="A placeholder digest pins nothing that was built, scanned or listed in an SBOM, and an image "
              "whose signature nobody verified may not be the one the release pipeline produced.",
    remediation="Publish the image from the release pipeline, sign it (cosign) and record its digest and the "
                "verified signature in workloads/images.lock.yaml.",
    resource_types=(*WORKLOAD_KINDS, ECS_TASK),
    applies=lambda resource_type, props: resource_type == ECS_TASK or has_pod(resource_type, props),
)
DIGEST = re.compile(r"@sha256:([0-9a-f]{64})$")


def _lock_by_digest() -> dict[str, dict]:
    from medplat.workloads import image_entries

    return {entry.get("digest", ""): entry for entry in image_entries().values()}


def problem(image: str) -> str | None:
    match = DIGEST.search(image)
    if not match:
        return None  # k8s-image-pinned-by-digest reports images without a digest
    digest = match.group(1)
    if len(set(digest)) == 1:
        return f"image {image.split('@')[0]} has a placeholder digest (sha256:{digest[:8]}…)"
    entry = _lock_by_digest().get(f"sha256:{digest}")
    if entry is None:
        return f"image {image.split('@')[0]} is not in workloads/images.lock.yaml: no signature verification recorded"
    if entry.get("placeholder"):
        return f"image {image.split('@')[0]} is marked placeholder in workloads/images.lock.yaml"
    if not entry.get("signature"):
        return f"image {image.split('@')[0]} has no verified signature recorded in workloads/images.lock.yaml"
    return None


def _images(args) -> list[tuple[str, str]]:
    if args.resource_type == ECS_TASK:
        try:
            definitions = json.loads(args.props.get("containerDefinitions") or "[]")
        except (TypeError, ValueError):
            return []
        return [(d.get("name", "?"), str(d.get("image", ""))) for d in definitions if isinstance(d, dict)]
    return [(c.get("name", "?"), str(c.get("image", ""))) for c in containers(pod_spec(args.resource_type,
                                                                                      args.props) or {})]


def check(args, report):
    for container, image in _images(args):
        found = problem(image)
        if found:
            report(f"'{args.name}', container '{container}': {found}")


POLICY = MedplatResourcePolicy(META, check)
