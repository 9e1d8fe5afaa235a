"""Entry point for `pulumi preview --policy-pack policies/pack`.

Building the PolicyPack starts the analyzer's gRPC server and blocks, so this file does
only that; the policies themselves import cleanly from `medplat.policies`. The stack's
`medplat:waivers` (passed by the CLI in PULUMI_CONFIG) are honoured as in the offline gate.
"""
from pulumi_policy import EnforcementLevel, PolicyPack

from medplat.policies.registry import PACK_NAME, all_policies
from medplat.policies.waivers import honour, waivers_from_env

PolicyPack(
    name=PACK_NAME,
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=honour(all_policies(), waivers_from_env()),
    description="medplat: MDR / GDPR / NIS2 / ISO 27001 guardrails for the EU PHI, analytics and edge zones",
)
