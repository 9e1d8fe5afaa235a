"""Translate a Pulumi AWS inventory into the JSON shape of `terraform show -json <plan>`.

pulumi-aws is bridged from the Terraform AWS provider, so each Pulumi type token has a
Terraform resource type and each camelCase input a snake_case attribute. Rendering the
planned resources in the plan format lets checkov's AWS checks (which have no Pulumi
support) run on the exact inputs Pulumi would send. Blocks the bridge flattened (max one
item) are turned back into one-item lists, as they appear in Terraform plans.
"""
from __future__ import annotations

import re
from typing import Any

# Pulumi module/resource -> Terraform type where the bridge renamed it; all others follow
# aws:<module>/<camel>:<Name> -> aws_<module>_<snake(Name)>.
TF_TYPES = {
    "aws:ec2/vpc:Vpc": "aws_vpc",
    "aws:ec2/subnet:Subnet": "aws_subnet",
    "aws:ec2/securityGroup:SecurityGroup": "aws_security_group",
    "aws:ec2/securityGroupRule:SecurityGroupRule": "aws_security_group_rule",
    "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup": "aws_default_security_group",
    "aws:ec2/routeTable:RouteTable": "aws_route_table",
    "aws:ec2/routeTableAssociation:RouteTableAssociation": "aws_route_table_association",
    "aws:ec2/vpcEndpoint:VpcEndpoint": "aws_vpc_endpoint",
    "aws:ec2/flowLog:FlowLog": "aws_flow_log",
    "aws:ec2/internetGateway:InternetGateway": "aws_internet_gateway",
    "aws:ec2/natGateway:NatGateway": "aws_nat_gateway",
    "aws:ec2/instance:Instance": "aws_instance",
    "aws:ebs/volume:Volume": "aws_ebs_volume",
    "aws:lb/loadBalancer:LoadBalancer": "aws_lb",
    "aws:lb/listener:Listener": "aws_lb_listener",
    "aws:lb/targetGroup:TargetGroup": "aws_lb_target_group",
    "aws:cloudtrail/trail:Trail": "aws_cloudtrail",
    "aws:rds/instance:Instance": "aws_db_instance",
    "aws:rds/cluster:Cluster": "aws_rds_cluster",
    "aws:s3/bucket:Bucket": "aws_s3_bucket",
    "aws:s3/bucketV2:BucketV2": "aws_s3_bucket",
}
# Attributes that are maps (or JSON strings) in Terraform, not nested blocks.
MAP_ATTRIBUTES = {"tags", "tags_all", "environment", "labels", "variables", "parameters", "options",
                  "docker_labels", "triggers", "metadata", "principals", "condition"}


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def tf_type(token: str) -> str | None:
    if not token.startswith("aws:"):
        return None
    if token in TF_TYPES:
        return TF_TYPES[token]
    module, _, name = token[len("aws:"):].partition(":")
    module = module.split("/", 1)[0]
    return f"aws_{module}_{snake(name)}"


def tf_attribute(name: str, value: Any) -> str:
    """Pulumi names repeatable blocks in the plural (rules, settings, defaultActions);
    Terraform keeps the block's singular name (rule, setting, default_action)."""
    attribute = snake(name)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value) and not attribute.endswith("ss"):
        if attribute.endswith("ies"):
            return attribute[:-3] + "y"
        if attribute.endswith("s"):
            return attribute[:-1]
    return attribute


def _values(value: Any, key: str | None = None) -> Any:
    if isinstance(value, dict):
        if key in MAP_ATTRIBUTES:
            return dict(value)
        block = {tf_attribute(k, v): _values(v, snake(k)) for k, v in value.items()}
        return [block]
    if isinstance(value, list):
        return [item for v in value for item in (_values(v, key) if isinstance(v, dict) else [v])]
    return value


def _is_reference_value(value: Any) -> bool:
    if isinstance(value, str):
        return not value.lstrip().startswith(("{", "["))
    return isinstance(value, list) and all(isinstance(v, str) and not v.startswith("{") for v in value)


def address_of(resource: dict[str, Any]) -> str | None:
    kind = tf_type(resource["type"])
    if kind is None:
        return None
    return f"{kind}.{re.sub(r'[^A-Za-z0-9_]', '_', resource['name'])}"


def render(inventory: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Return (plan JSON, address -> URN)."""
    resources = [r for r in inventory["resources"] if r["custom"] and address_of(r)]
    addresses = {r["urn"]: address_of(r) for r in resources}
    planned, configured = [], []
    for resource in resources:
        address = addresses[resource["urn"]]
        kind, name = address.split(".", 1)
        references = {prop for prop, deps in (resource.get("propertyDependencies") or {}).items()
                      if any(d in addresses for d in deps)}
        # An input that is just another resource's id is unknown in a real plan; Terraform
        # records it as a reference instead, which is how checkov links the two resources.
        values = {tf_attribute(k, v): _values(v, snake(k)) for k, v in resource["inputs"].items()
                  if not k.startswith("__") and not (k in references and _is_reference_value(v))}
        if "tags" in values:
            values["tags_all"] = dict(values["tags"])
        planned.append({"address": address, "mode": "managed", "type": kind, "name": name,
                        "provider_name": "registry.terraform.io/hashicorp/aws", "schema_version": 0,
                        "values": values, "sensitive_values": {}})
        expressions = {}
        for prop, deps in (resource.get("propertyDependencies") or {}).items():
            refs = [addresses[d] for d in deps if d in addresses]
            if refs:
                expressions[snake(prop)] = {"references": [item for ref in refs for item in (f"{ref}.id", ref)]}
        configured.append({"address": address, "mode": "managed", "type": kind, "name": name,
                           "provider_config_key": "aws", "expressions": expressions, "schema_version": 0})
    plan = {
        "format_version": "1.2",
        "terraform_version": "1.9.0",
        "planned_values": {"root_module": {"resources": planned}},
        "configuration": {"provider_config": {"aws": {"name": "aws", "full_name": "registry.terraform.io/hashicorp/aws"}},
                          "root_module": {"resources": configured}},
    }
    return plan, {address: urn for urn, address in addresses.items()}
