"""Images are pinned by digest."""
import re

from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatResourcePolicy
from medplat.policies.lib import WORKLOAD_KINDS, container_policy_check, has_pod

META = Meta(
    id="k8s-image-pinned-by-digest",
    description="Container images are referenced by sha256 digest, never by tag.",
    severity=Severity.HIGH,
    rationale="A tag can be moved to different bytes; a digest pins exactly the image that was scanned "
              "and listed in the SBOM.",
    remediation="Reference images as repository@sha256:<digest> (workloads/images.lock.yaml).",
    resource_types=tuple(WORKLOAD_KINDS),
    applies=has_pod,
)
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")

POLICY = MedplatResourcePolicy(META, container_policy_check(
    lambda c, pod: bool(DIGEST.search(str(c.get("image", "")))), "image is not pinned by digest"))
