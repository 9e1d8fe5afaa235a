"""Every taggable resource carries the four medplat labels."""
from pulumi_policy import Severity

from medplat.components.labels import DATA_CLASSES, LABEL_KEYS, ZONES
from medplat.policies.base import Meta, MedplatResourcePolicy
from medplat.policies.lib import labels, taggable

META = Meta(
    id="mandatory-labels",
    description="Resources that can carry tags or labels carry medplat:zone, medplat:site, "
                "medplat:data-class and medplat:owner with valid values.",
    severity=Severity.MEDIUM,
    rationale="The asset inventory, data classification and the residency proof all read these labels.",
    remediation="Create the resource through a medplat component (LabelledComponent.child), which labels it.",
    applies=lambda resource_type, _props: not resource_type.startswith("pulumi:") and taggable(resource_type),
)


def check(args, report):
    if args.resource_type.startswith("pulumi:") or not taggable(args.resource_type):
        return
    found = labels(args.resource_type, args.props)
    missing = [key for key in LABEL_KEYS if not found.get(key)]
    if missing:
        report(f"'{args.name}' lacks {', '.join(missing)}")
        return
    if found["medplat:zone"] not in ZONES:
        report(f"'{args.name}' has unknown zone {found['medplat:zone']!r}")
    if found["medplat:data-class"] not in DATA_CLASSES:
        report(f"'{args.name}' has unknown data class {found['medplat:data-class']!r}")


POLICY = MedplatResourcePolicy(META, check)
