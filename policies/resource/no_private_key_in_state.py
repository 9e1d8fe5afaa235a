"""No private key is generated into, or passed through, Pulumi state."""
from collections.abc import Mapping, Sequence

from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatResourcePolicy

GENERATED = {  # resource types whose provider writes a private key into state by design
    "tls:index/privateKey:PrivateKey": "generates its private key into Pulumi state",
}
KEY_PROPERTIES = ("privateKeyPem", "privateKeyPemPkcs8", "privateKeyOpenssh", "caPrivateKeyPem")
META = Meta(
    id="no-private-key-in-state",
    description="No resource generates a private key into Pulumi state (pulumi-tls PrivateKey), takes one as "
                "an input, holds PEM private key text, or is a kubernetes.io/tls Secret whose key Pulumi "
                "manages; secret-wrapped values count too (state holds them, encrypted).",
    severity=Severity.CRITICAL,
    rationale="Anyone who can read or decrypt the stack's state (backend operators, every deployer) would hold "
              "the CA or site keys; keys belong in the key manager (Barbican) or on the device that uses them.",
    remediation="Keep the CA key in Barbican or an external issuer, and generate site keys at the site "
                "(certificate signing requests); store only certificates in state.",
)
PEM_MARK = "PRIVATE KEY-----"


def _pem_paths(node, path="") -> list[str]:
    if isinstance(node, str):
        return [path or "value"] if PEM_MARK in node else []
    if isinstance(node, Mapping):
        return [p for key, value in node.items() for p in _pem_paths(value, f"{path}.{key}" if path else str(key))]
    if isinstance(node, Sequence):
        return [p for index, value in enumerate(node) for p in _pem_paths(value, f"{path}[{index}]")]
    return []


def check(args, report):
    if args.resource_type in GENERATED:
        report(f"{args.resource_type} '{args.name}' {GENERATED[args.resource_type]}")
    props = args.props
    for key in KEY_PROPERTIES:
        if props.get(key) is not None:
            report(f"'{args.name}' takes a private key as input ({key}): it is stored in Pulumi state")
    if args.resource_type == "kubernetes:core/v1:Secret" and props.get("type") == "kubernetes.io/tls":
        report(f"TLS Secret '{args.name}' carries its private key through Pulumi state")
    for path in _pem_paths(props):
        report(f"'{args.name}' holds PEM private key text at {path}")


POLICY = MedplatResourcePolicy(META, check)
