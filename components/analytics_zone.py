"""`DeidAnalyticsZone`: the de-identified analytics zone on AWS, EU region only.

Only de-identified and operational data lives here. Private subnets only (no internet
gateway); AWS APIs are reached through VPC endpoints. One customer-managed KMS key with
rotation encrypts buckets, logs, Athena results and ECR. Audit and evidence buckets are
under COMPLIANCE-mode object lock; CloudTrail validates its log files; VPC flow logs are on.
Analytics can read only the de-identified bucket.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from medplat.components.base import LabelledComponent
from medplat.components.labels import Labels
from medplat.components.secure_bucket import LOG_TARGET_PURPOSE, SecureBucket, SecureBucketArgs
from medplat.components.workload_spec import WorkloadSpec

INTERFACE_ENDPOINTS = ("kms", "logs", "ecr.api", "ecr.dkr", "sts")
TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"


@dataclass
class DeidAnalyticsZoneArgs:
    region: str
    vpc_cidr: str
    availability_zones: list[str]
    log_retention_days: int
    evidence_retention_days: int
    certificate_arn: str
    writer_principal_arns: list[str]
    workloads: list[WorkloadSpec]
    images: dict[str, str]


# The analytics feed's Parquet layout (workloads/analytics-feed/feed.py): name -> (columns,
# partition keys, folder under the bucket). Athena types for the Arrow schema the feed writes.
FEED_PREFIX = "telemetry"
FEED_TABLES: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]], str]] = {
    "observations": ([("patient", "string"), ("device", "string"), ("code_system", "string"), ("code", "string"),
                      ("statistic", "string"), ("value", "double"), ("unit", "string"), ("effective", "timestamp")],
                     [("day", "string")], "observations"),
    "patients": ([("patient", "string"), ("age", "string"), ("sex", "string")], [], "patients"),
}
PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"


def _subnet_cidrs(vpc_cidr: str, count: int) -> list[str]:
    import ipaddress
    return [str(net) for net in list(ipaddress.ip_network(vpc_cidr).subnets(new_prefix=20))[:count]]


class DeidAnalyticsZone(LabelledComponent):
    def __init__(self, name: str, args: DeidAnalyticsZoneArgs, labels: Labels,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("medplat:components:DeidAnalyticsZone", name, labels.with_class("deidentified"), opts)
        invoke_opts = pulumi.InvokeOutputOptions(parent=self)
        account = aws.get_caller_identity_output(opts=invoke_opts).account_id
        partition = aws.get_partition_output(opts=invoke_opts).partition
        region = args.region

        # --- KMS: one customer-managed key, rotated yearly ---------------------------------
        key = self.child(aws.kms.Key, "kms", data_class="deidentified",
                         description="medplat analytics zone: de-identified data, logs, evidence",
                         enable_key_rotation=True, deletion_window_in_days=30,
                         policy=pulumi.Output.json_dumps(_key_policy(account, partition, region)))
        self.child(aws.kms.Alias, "kms-alias", name=f"alias/medplat-{name}", target_key_id=key.key_id)

        # --- network: private subnets only, no internet gateway -----------------------------
        vpc = self.child(aws.ec2.Vpc, "vpc", data_class="operational", cidr_block=args.vpc_cidr,
                         enable_dns_hostnames=True, enable_dns_support=True)
        self.child(aws.ec2.DefaultSecurityGroup, "default-sg", data_class="operational", vpc_id=vpc.id,
                   ingress=[], egress=[])
        route_table = self.child(aws.ec2.RouteTable, "private-rt", data_class="operational", vpc_id=vpc.id)
        subnets = []
        for zone, cidr in zip(args.availability_zones, _subnet_cidrs(args.vpc_cidr, len(args.availability_zones)),
                              strict=True):
            subnet = self.child(aws.ec2.Subnet, f"private-{zone}", data_class="operational", vpc_id=vpc.id,
                                cidr_block=cidr, availability_zone=zone, map_public_ip_on_launch=False)
            self.child(aws.ec2.RouteTableAssociation, f"private-{zone}-rt", data_class="operational",
                       subnet_id=subnet.id, route_table_id=route_table.id)
            subnets.append(subnet)
        subnet_ids = [s.id for s in subnets]

        logs_role = self.child(aws.iam.Role, "flow-logs-role", data_class="operational",
                               assume_role_policy=json.dumps(_trust("vpc-flow-logs.amazonaws.com")))
        flow_group = self.child(aws.cloudwatch.LogGroup, "flow-logs", data_class="operational",
                                retention_in_days=args.log_retention_days, kms_key_id=key.arn)
        self.child(aws.iam.RolePolicy, "flow-logs-write", data_class="operational", role=logs_role.id,
                   policy=pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": [{
                       "Effect": "Allow",
                       "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                       "Resource": pulumi.Output.concat(flow_group.arn, ":*")}]}))
        self.child(aws.ec2.FlowLog, "flow-log", data_class="operational", vpc_id=vpc.id, traffic_type="ALL",
                   log_destination_type="cloud-watch-logs", log_destination=flow_group.arn,
                   iam_role_arn=logs_role.arn)

        endpoint_sg = self.child(
            aws.ec2.SecurityGroup, "endpoints-sg", data_class="operational", vpc_id=vpc.id,
            description="VPC interface endpoints: HTTPS from inside the VPC",
            ingress=[{"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": [args.vpc_cidr],
                      "description": "HTTPS from the VPC"}],
            egress=[{"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": [args.vpc_cidr],
                     "description": "HTTPS within the VPC"}],
        )
        self.child(aws.ec2.VpcEndpoint, "s3-endpoint", data_class="operational", vpc_id=vpc.id,
                   service_name=f"com.amazonaws.{region}.s3", vpc_endpoint_type="Gateway",
                   route_table_ids=[route_table.id])
        for service in INTERFACE_ENDPOINTS:
            self.child(aws.ec2.VpcEndpoint, f"{service.replace('.', '-')}-endpoint", data_class="operational",
                       vpc_id=vpc.id, service_name=f"com.amazonaws.{region}.{service}",
                       vpc_endpoint_type="Interface", private_dns_enabled=True,
                       subnet_ids=subnet_ids, security_group_ids=[endpoint_sg.id])

        # --- buckets -------------------------------------------------------------------------
        def bucket(purpose: str, data_class: str, **kwargs) -> SecureBucket:
            return SecureBucket(f"{name}-{purpose}", SecureBucketArgs(purpose=purpose, **kwargs),
                                labels=self.labels.with_class(data_class),
                                opts=pulumi.ResourceOptions(parent=self))

        access_logs = bucket(LOG_TARGET_PURPOSE, "operational", kms_key_arn=None, is_log_target=True,
                             policy_statements=lambda arn: _log_delivery_statements(arn, account))
        log_target = access_logs.bucket.id
        deid = bucket("deidentified", "deidentified", kms_key_arn=key.arn, access_log_bucket=log_target)
        athena_results = bucket("athena-results", "deidentified", kms_key_arn=key.arn, access_log_bucket=log_target)
        audit = bucket("audit", "operational", kms_key_arn=key.arn, access_log_bucket=log_target,
                       object_lock_days=args.evidence_retention_days,
                       policy_statements=lambda arn: _cloudtrail_statements(arn, account, partition, region, name))
        evidence = bucket("evidence", "operational", kms_key_arn=key.arn, access_log_bucket=log_target,
                          object_lock_days=args.evidence_retention_days)

        # --- CloudTrail (to the object-locked bucket, and to CloudWatch for alerting) -----------
        trail_group = self.child(aws.cloudwatch.LogGroup, "trail-logs", data_class="operational",
                                 retention_in_days=args.log_retention_days, kms_key_id=key.arn)
        trail_role = self.child(aws.iam.Role, "trail-logs-role", data_class="operational",
                                assume_role_policy=json.dumps(_trust("cloudtrail.amazonaws.com")))
        self.child(aws.iam.RolePolicy, "trail-logs-write", data_class="operational", role=trail_role.id,
                   policy=pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": [{
                       "Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                       "Resource": pulumi.Output.concat(trail_group.arn, ":*")}]}))
        trail = self.child(aws.cloudtrail.Trail, "trail", data_class="operational", name=f"medplat-{name}",
                           cloud_watch_logs_group_arn=pulumi.Output.concat(trail_group.arn, ":*"),
                           cloud_watch_logs_role_arn=trail_role.arn,
                           s3_bucket_name=audit.bucket.id, s3_key_prefix="cloudtrail",
                           enable_log_file_validation=True, is_multi_region_trail=True,
                           include_global_service_events=True, kms_key_id=key.arn, enable_logging=True,
                           opts=pulumi.ResourceOptions(depends_on=[audit]))

        # --- IAM: least privilege ----------------------------------------------------------------
        reader = self.child(aws.iam.Role, "analytics-reader", data_class="deidentified",
                            description="analytics workloads: read the de-identified bucket only",
                            assume_role_policy=json.dumps(_trust("ecs-tasks.amazonaws.com")))
        self.child(aws.iam.RolePolicy, "analytics-reader-policy", data_class="deidentified", role=reader.id,
                   policy=pulumi.Output.json_dumps(_read_only(deid.arn, key.arn, region)))
        writer = self.child(aws.iam.Role, "deid-writer", data_class="deidentified",
                            description="de-identification exporters: write the de-identified bucket only",
                            assume_role_policy=json.dumps({"Version": "2012-10-17", "Statement": [{
                                "Effect": "Allow", "Action": "sts:AssumeRole",
                                "Principal": {"AWS": args.writer_principal_arns}}]}))
        self.child(aws.iam.RolePolicy, "deid-writer-policy", data_class="deidentified", role=writer.id,
                   policy=pulumi.Output.json_dumps(_write_only(deid.arn, key.arn, region)))
        execution = self.child(aws.iam.Role, "ecs-execution", data_class="operational",
                               assume_role_policy=json.dumps(_trust("ecs-tasks.amazonaws.com")))
        self.child(aws.iam.RolePolicyAttachment, "ecs-execution-policy", data_class="operational",
                   role=execution.name,
                   policy_arn="arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy")

        # --- Athena --------------------------------------------------------------------------------
        self.child(aws.athena.Workgroup, "athena", data_class="deidentified", name=f"medplat-{name}",
                   force_destroy=False, configuration={
                       "enforce_workgroup_configuration": True,
                       "publish_cloudwatch_metrics_enabled": True,
                       "result_configuration": {
                           "output_location": pulumi.Output.concat("s3://", athena_results.bucket.id, "/results/"),
                           "encryption_configuration": {"encryption_option": "SSE_KMS", "kms_key_arn": key.arn},
                       },
                   })

        # --- Glue catalog: the analytics feed's release tables, queried with Athena ---------------
        self.catalog = self._feed_catalog(name, deid.bucket.id)

        # --- containers: ECR + ECS Fargate behind an internal TLS load balancer ------------------
        cluster = self.child(aws.ecs.Cluster, "ecs", data_class="deidentified",
                             settings=[{"name": "containerInsights", "value": "enabled"}])
        task_logs = self.child(aws.cloudwatch.LogGroup, "task-logs", data_class="operational",
                               retention_in_days=args.log_retention_days, kms_key_id=key.arn)
        lb_sg = self.child(aws.ec2.SecurityGroup, "alb-sg", data_class="operational", vpc_id=vpc.id,
                           description="internal analytics API load balancer",
                           ingress=[{"protocol": "tcp", "from_port": 443, "to_port": 443,
                                     "cidr_blocks": [args.vpc_cidr], "description": "HTTPS from the VPC"}],
                           egress=[{"protocol": "tcp", "from_port": 8080, "to_port": 8080,
                                    "cidr_blocks": [args.vpc_cidr], "description": "to tasks"}])
        task_sg = self.child(aws.ec2.SecurityGroup, "tasks-sg", data_class="operational", vpc_id=vpc.id,
                             description="analytics tasks: only from the load balancer",
                             ingress=[{"protocol": "tcp", "from_port": 8080, "to_port": 8080,
                                       "security_groups": [lb_sg.id], "description": "from the ALB"}],
                             egress=[{"protocol": "tcp", "from_port": 443, "to_port": 443,
                                      "cidr_blocks": [args.vpc_cidr], "description": "VPC endpoints"}])
        alb = self.child(aws.lb.LoadBalancer, "alb", data_class="deidentified", internal=True,
                         load_balancer_type="application", subnets=subnet_ids, security_groups=[lb_sg.id],
                         drop_invalid_header_fields=True, enable_deletion_protection=True,
                         access_logs={"bucket": access_logs.bucket.id, "prefix": "alb", "enabled": True})
        self.repositories: dict[str, aws.ecr.Repository] = {}
        for spec in args.workloads:
            self.repositories[spec.name] = self._ecs_workload(
                spec, args, cluster, execution, reader, task_logs, task_sg, subnet_ids, key, vpc, alb)

        self.outputs = {
            "region": region,
            "vpcId": vpc.id,
            "kmsKeyArn": key.arn,
            "deidentifiedBucket": deid.bucket.id,
            "evidenceBucket": evidence.bucket.id,
            "auditBucket": audit.bucket.id,
            "trail": trail.arn,
            "analyticsReaderRole": reader.arn,
            "deidWriterRole": writer.arn,
            "apiEndpoint": alb.dns_name.apply(lambda dns: f"https://{dns}"),
            "workloads": sorted(self.repositories),
        }
        self.finish(self.outputs)

    def _feed_catalog(self, name: str, bucket: pulumi.Input[str]) -> dict[str, aws.glue.CatalogTable]:
        """One Glue database with the feed's tables; the day partitions are projected (no crawler,
        no MSCK REPAIR): a new release is queryable as soon as its record is written."""
        database = self.child(aws.glue.CatalogDatabase, "feed-db", data_class="deidentified",
                              name=f"medplat_{name.replace('-', '_')}_deidentified",
                              description="De-identified releases of the EU zone's analytics feed")
        tables = {}
        for table, (columns, partitions, folder) in FEED_TABLES.items():
            location = pulumi.Output.concat("s3://", bucket, f"/{FEED_PREFIX}/{folder}/")
            parameters = {"classification": "parquet", "parquet.compression": "ZSTD", "EXTERNAL": "TRUE"}
            if partitions:
                parameters.update({
                    "projection.enabled": "true", "projection.day.type": "date",
                    "projection.day.format": "yyyy-MM-dd", "projection.day.range": "2000-01-01,NOW",
                    "projection.day.interval": "1", "projection.day.interval.unit": "DAYS",
                })
            tables[table] = self.child(
                aws.glue.CatalogTable, f"feed-{table}", data_class="deidentified",
                name=table, database_name=database.name, table_type="EXTERNAL_TABLE",
                parameters=parameters,
                partition_keys=[aws.glue.CatalogTablePartitionKeyArgs(name=n, type=t) for n, t in partitions],
                storage_descriptor=aws.glue.CatalogTableStorageDescriptorArgs(
                    location=location,
                    input_format="org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
                    output_format="org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
                    ser_de_info=aws.glue.CatalogTableStorageDescriptorSerDeInfoArgs(
                        serialization_library=PARQUET_SERDE, parameters={"serialization.format": "1"}),
                    columns=[aws.glue.CatalogTableStorageDescriptorColumnArgs(name=n, type=t) for n, t in columns],
                ))
        return tables

    def _ecs_workload(self, spec, args, cluster, execution, reader, task_logs, task_sg, subnet_ids, key, vpc, alb):
        data_class = "deidentified"
        repo = self.child(aws.ecr.Repository, f"ecr-{spec.name}", data_class=data_class, name=f"medplat/{spec.name}",
                          image_tag_mutability="IMMUTABLE", force_delete=False,
                          image_scanning_configuration={"scan_on_push": True},
                          encryption_configurations=[{"encryption_type": "KMS", "kms_key": key.arn}])
        port = spec.ports[0].port
        container = {
            "name": spec.name,
            "image": args.images[spec.name],
            "essential": True,
            "readonlyRootFilesystem": True,
            "privileged": False,
            "user": f"{spec.run_as_user}:{spec.run_as_user}",
            "portMappings": [{"containerPort": p.port, "protocol": p.protocol.lower()} for p in spec.ports],
            "environment": [{"name": k, "value": v} for k, v in sorted(spec.env.items())],
            "linuxParameters": {"capabilities": {"drop": ["ALL"]}, "initProcessEnabled": True},
            "healthCheck": {"command": ["CMD", "/usr/local/bin/healthcheck", spec.health.path],
                            "interval": 30, "timeout": 5, "retries": 3},
            "logConfiguration": {"logDriver": "awslogs", "options": {
                "awslogs-group": task_logs.name, "awslogs-region": args.region, "awslogs-stream-prefix": spec.name}},
        }
        task = self.child(aws.ecs.TaskDefinition, f"task-{spec.name}", data_class=data_class, family=f"medplat-{spec.name}",
                          requires_compatibilities=["FARGATE"], network_mode="awsvpc",
                          cpu=str(_fargate_cpu(spec.resources.limits.cpu)),
                          memory=str(_fargate_memory(spec.resources.limits.memory)),
                          execution_role_arn=execution.arn, task_role_arn=reader.arn,
                          runtime_platform={"operating_system_family": "LINUX", "cpu_architecture": "X86_64"},
                          container_definitions=pulumi.Output.json_dumps([container]))
        load_balancers = []
        depends = []
        if "analytics" in spec.roles:
            target = self.child(aws.lb.TargetGroup, f"tg-{spec.name}", data_class=data_class,
                                port=port, protocol="HTTP", target_type="ip", vpc_id=vpc.id,
                                health_check={"path": spec.health.path, "matcher": "200"})
            listener = self.child(aws.lb.Listener, f"https-{spec.name}", data_class=data_class,
                                  load_balancer_arn=alb.arn, port=443, protocol="HTTPS", ssl_policy=TLS_POLICY,
                                  certificate_arn=args.certificate_arn,
                                  default_actions=[{"type": "forward", "target_group_arn": target.arn}])
            load_balancers = [{"target_group_arn": target.arn, "container_name": spec.name, "container_port": port}]
            depends = [listener]
        self.child(aws.ecs.Service, f"svc-{spec.name}", data_class=data_class, cluster=cluster.arn,
                   task_definition=task.arn, desired_count=spec.replicas, launch_type="FARGATE",
                   propagate_tags="SERVICE", enable_execute_command=False,
                   network_configuration={"subnets": subnet_ids, "security_groups": [task_sg.id],
                                          "assign_public_ip": False},
                   load_balancers=load_balancers, opts=pulumi.ResourceOptions(depends_on=depends))
        return repo


def _fargate_cpu(quantity: str) -> int:
    units = float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
    return next(c for c in (256, 512, 1024, 2048, 4096) if c >= units * 1024)


def _fargate_memory(quantity: str) -> int:
    factor = {"Mi": 1, "Gi": 1024}
    mib = int(float(quantity[:-2]) * factor[quantity[-2:]])
    return max(512, -(-mib // 512) * 512)


def _trust(service: str) -> dict:
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]}


def _key_policy(account, partition, region) -> dict:
    root = pulumi.Output.format("arn:{0}:iam::{1}:root", partition, account)
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "AccountAdministration", "Effect": "Allow", "Principal": {"AWS": root},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "CloudWatchLogs", "Effect": "Allow", "Principal": {"Service": f"logs.{region}.amazonaws.com"},
         "Action": ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
         "Resource": "*"},
        {"Sid": "CloudTrail", "Effect": "Allow", "Principal": {"Service": "cloudtrail.amazonaws.com"},
         "Action": ["kms:GenerateDataKey*", "kms:DescribeKey"], "Resource": "*"},
    ]}


def _read_only(bucket_arn, key_arn, region) -> dict:
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "ListDeidentified", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": bucket_arn},
        {"Sid": "ReadDeidentified", "Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectVersion"],
         "Resource": pulumi.Output.concat(bucket_arn, "/*")},
        {"Sid": "DecryptViaS3", "Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": key_arn,
         "Condition": {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}}},
    ]}


def _write_only(bucket_arn, key_arn, region) -> dict:
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "WriteDeidentified", "Effect": "Allow", "Action": ["s3:PutObject"],
         "Resource": pulumi.Output.concat(bucket_arn, "/*")},
        {"Sid": "EncryptViaS3", "Effect": "Allow", "Action": ["kms:GenerateDataKey"], "Resource": key_arn,
         "Condition": {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}}},
    ]}


def _cloudtrail_statements(bucket_arn, account, partition, region, name) -> list[dict]:
    trail_arn = pulumi.Output.format("arn:{0}:cloudtrail:{1}:{2}:trail/medplat-{3}", partition, region, account, name)
    return [
        {"Sid": "CloudTrailAclCheck", "Effect": "Allow", "Principal": {"Service": "cloudtrail.amazonaws.com"},
         "Action": "s3:GetBucketAcl", "Resource": bucket_arn,
         "Condition": {"StringEquals": {"aws:SourceArn": trail_arn}}},
        {"Sid": "CloudTrailWrite", "Effect": "Allow", "Principal": {"Service": "cloudtrail.amazonaws.com"},
         "Action": "s3:PutObject",
         "Resource": pulumi.Output.format("{0}/cloudtrail/AWSLogs/{1}/*", bucket_arn, account),
         "Condition": {"StringEquals": {"aws:SourceArn": trail_arn}}},
    ]


def _log_delivery_statements(bucket_arn, account) -> list[dict]:
    return [
        {"Sid": "S3ServerAccessLogs", "Effect": "Allow", "Principal": {"Service": "logging.s3.amazonaws.com"},
         "Action": "s3:PutObject", "Resource": pulumi.Output.concat(bucket_arn, "/s3/*"),
         "Condition": {"StringEquals": {"aws:SourceAccount": account}}},
        {"Sid": "AlbAccessLogs", "Effect": "Allow",
         "Principal": {"Service": "logdelivery.elasticloadbalancing.amazonaws.com"},
         "Action": "s3:PutObject", "Resource": pulumi.Output.concat(bucket_arn, "/alb/*")},
    ]
