"""`Workload`: renders a WorkloadSpec into hardened Kubernetes objects.

Every pod runs as non-root with a read-only root filesystem, no privilege escalation,
all capabilities dropped, seccomp RuntimeDefault, no service-account token, resource
limits and probes; images are pinned by digest. Network access is only what the spec
declares: the site's default-deny NetworkPolicy stays in force for everything else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from medplat.components.base import LabelledComponent
from medplat.components.labels import Labels
from medplat.components.workload_spec import WorkloadSpec

PART_OF = "medplat"
# Peer groups reached on one well-known port: the cloud ingress (HTTPS, mTLS) and the
# PHI database (PostgreSQL). Devices speak many protocols, so no port is fixed for them.
GROUP_PORTS = {"@cloud": 443, "@database": 5432, "@analytics-bucket": 443, "@state-backend": 443}


@dataclass
class PeerContext:
    """What the deploying site knows about the peers a spec may name."""

    cidrs: dict[str, list[str]] = field(default_factory=dict)  # "@devices" -> CIDRs, ...
    workload_ports: dict[str, list[int]] = field(default_factory=dict)  # workload -> its ports
    zones: dict[str, str] = field(default_factory=dict)  # "@cloud" -> the zone behind that group


@dataclass
class WorkloadArgs:
    spec: WorkloadSpec
    image: str
    namespace: pulumi.Input[str]
    peers: PeerContext = field(default_factory=PeerContext)
    secret_names: dict[str, pulumi.Input[str]] = field(default_factory=dict)
    config_map_names: dict[str, pulumi.Input[str]] = field(default_factory=dict)
    storage_class: str | None = None
    volume_sizes: dict[str, str] = field(default_factory=dict)
    # The site broker login (components/broker_logins.py): the Secret holding this workload's
    # password. The pod mounts it and the foundation's MQTT settings point at it.
    broker_login_secret: pulumi.Input[str] | None = None
    # Pod-template annotations, e.g. a digest of mounted config the process reads only at start:
    # a change rolls the pods (the broker reads its password file only when it starts).
    pod_annotations: dict[str, pulumi.Input[str]] = field(default_factory=dict)


BROKER_LOGIN_DIR = "/etc/medplat/broker-login"


def broker_env(spec: WorkloadSpec) -> dict[str, str]:
    """The foundation's MQTT settings for a workload with a broker login: the password file, and the
    broker URL with the workload's user (the ACL user is the workload's name)."""
    env = {f"{spec.env_prefix}BROKER_PASSWORD_FILE": f"{BROKER_LOGIN_DIR}/password"}
    url = spec.env.get(f"{spec.env_prefix}BROKER_URL")
    if url:
        scheme, rest = url.split("://", 1)
        env[f"{spec.env_prefix}BROKER_URL"] = f"{scheme}://{spec.name}@{rest.rsplit('@', 1)[-1]}"
    return env


# Annotations that let policies (and auditors) follow data through a deployment without
# the spec file: what it reads and writes, its roles, and where it may send data.
ANNOTATION_PREFIX = "medplat.io/"


def flow_annotations(spec: WorkloadSpec, peers: PeerContext) -> dict[str, str]:
    return {
        ANNOTATION_PREFIX + "workload": spec.name,
        ANNOTATION_PREFIX + "roles": ",".join(spec.roles),
        ANNOTATION_PREFIX + "reads": ",".join(spec.data_classes.reads),
        ANNOTATION_PREFIX + "writes": ",".join(spec.data_classes.writes),
        # Only peers this site actually lets it reach (the NetworkPolicy has a rule for them).
        ANNOTATION_PREFIX + "egress": ",".join(
            peer for peer in spec.network.egress_to
            if peers.cidrs.get(peer) or peer in peers.workload_ports or peer == "@site-workloads"),
        ANNOTATION_PREFIX + "ingress": ",".join(spec.network.ingress_from),
        ANNOTATION_PREFIX + "egress-zones": ",".join(
            f"{group}={zone}" for group, zone in sorted(peers.zones.items())),
    }


def selector_labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": PART_OF}


class Workload(LabelledComponent):
    def __init__(self, name: str, args: WorkloadArgs, labels: Labels, opts: pulumi.ResourceOptions | None = None):
        spec = args.spec
        # The component's own data class is the most sensitive one the workload writes.
        super().__init__("medplat:components:Workload", name, labels.with_class(_primary_class(spec)), opts)
        self.spec = spec
        meta = {"namespace": args.namespace}

        self.service_account = self.child(
            k8s.core.v1.ServiceAccount, "sa",
            metadata={**meta, "name": spec.name},
            automount_service_account_token=False,
        )

        claims = {
            volume.name: self.child(
                k8s.core.v1.PersistentVolumeClaim, f"pvc-{volume.name}",
                metadata={**meta, "name": f"{spec.name}-{volume.name}"},
                spec={
                    "accessModes": ["ReadWriteOnce"],
                    **({"storageClassName": args.storage_class} if args.storage_class else {}),
                    "resources": {"requests": {"storage": args.volume_sizes.get(volume.name, volume.size)}},
                },
                opts=pulumi.ResourceOptions(protect=False),
            )
            for volume in spec.volumes
        }

        self.files = None
        if spec.config_files:
            self.files = self.child(
                k8s.core.v1.ConfigMap, "files",
                metadata={**meta, "name": f"{spec.name}-files"},
                data=dict(sorted(spec.config_files.items())),
            )

        pod_labels = {**selector_labels(spec.name), **self.labels.as_k8s()}
        job_only = spec.schedule is not None and not spec.ports
        self.deployment = None if job_only else self.child(
            k8s.apps.v1.Deployment, "deployment",
            metadata={**meta, "name": spec.name, "annotations": flow_annotations(spec, args.peers)},
            spec={
                "replicas": spec.replicas,
                # A ReadWriteOnce volume cannot be attached to two pods during a rollout.
                "strategy": {"type": "Recreate" if claims else "RollingUpdate"},
                "selector": {"matchLabels": selector_labels(spec.name)},
                "template": {
                    "metadata": {"labels": pod_labels,
                                 **({"annotations": dict(args.pod_annotations)} if args.pod_annotations else {})},
                    "spec": self._pod_spec(args, claims),
                },
            },
        )

        self.cron_job = None
        if spec.schedule is not None:
            pod = self._pod_spec(args, claims)
            container = {k: v for k, v in pod["containers"][0].items() if k not in ("livenessProbe", "readinessProbe")}
            if spec.schedule.args:
                container["args"] = list(spec.schedule.args)
            self.cron_job = self.child(
                k8s.batch.v1.CronJob, "cron",
                metadata={**meta, "name": spec.name, "annotations": flow_annotations(spec, args.peers)},
                spec={
                    "schedule": spec.schedule.cron,
                    "timeZone": "Etc/UTC",
                    "concurrencyPolicy": "Forbid",  # releases are idempotent, but one writer at a time
                    "successfulJobsHistoryLimit": 3,
                    "failedJobsHistoryLimit": 3,
                    "jobTemplate": {"spec": {
                        "backoffLimit": spec.schedule.backoff_limit,
                        "activeDeadlineSeconds": spec.schedule.active_deadline_seconds,
                        "template": {
                            "metadata": {"labels": pod_labels},
                            "spec": {**pod, "containers": [container], "restartPolicy": "Never"},
                        },
                    }},
                },
            )

        self.service = None
        if spec.ports:
            node_ports = [p for p in spec.ports if p.node_port]
            self.service = self.child(
                k8s.core.v1.Service, "service",
                metadata={**meta, "name": spec.name},
                spec={
                    "type": "NodePort" if node_ports else "ClusterIP",
                    "selector": selector_labels(spec.name),
                    "ports": [
                        {
                            "name": p.name, "port": p.port, "targetPort": p.name, "protocol": p.protocol,
                            **({"nodePort": p.node_port} if p.node_port else {}),
                        }
                        for p in spec.ports
                    ],
                },
            )

        self.batch_job = None
        if spec.batch is not None:
            pod = self._pod_spec(args, claims)
            container = {k: v for k, v in pod["containers"][0].items() if k not in ("livenessProbe", "readinessProbe")}
            container["args"] = list(spec.batch.args)
            self.batch_job = self.child(
                k8s.batch.v1.Job, "batch",
                metadata={**meta, "name": f"{spec.name}-batch", "annotations": flow_annotations(spec, args.peers)},
                spec={
                    "completionMode": "Indexed",
                    "completions": spec.batch.completions,
                    "parallelism": spec.batch.parallelism,
                    "backoffLimitPerIndex": spec.batch.backoff_limit_per_index,
                    "ttlSecondsAfterFinished": 86400,
                    "template": {
                        "metadata": {"labels": pod_labels},
                        "spec": {**pod, "containers": [container], "restartPolicy": "Never"},
                    },
                },
            )

        self.network_policy = self.child(
            k8s.networking.v1.NetworkPolicy, "netpol",
            metadata={**meta, "name": f"{spec.name}-allow"},
            spec=self._network_policy(args),
        )
        self.finish({
            "image": args.image,
            "dataClasses": {"reads": list(spec.data_classes.reads), "writes": list(spec.data_classes.writes)},
            "roles": list(spec.roles),
        })

    def _pod_spec(self, args: WorkloadArgs, claims: dict[str, Any]) -> dict[str, Any]:
        spec = args.spec
        mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
        volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
        for secret in spec.secrets:
            if secret.name not in args.secret_names:
                raise ValueError(f"workload {spec.name!r} mounts secret {secret.name!r}, "
                                 f"which this zone does not provide ({', '.join(sorted(args.secret_names))})")
            mounts.append({"name": secret.name, "mountPath": secret.mount_path, "readOnly": True})
            volumes.append({"name": secret.name, "secret": {
                "secretName": args.secret_names[secret.name], "defaultMode": 0o440,
            }})
        env = dict(spec.env)
        if args.broker_login_secret is not None:
            mounts.append({"name": "broker-login", "mountPath": BROKER_LOGIN_DIR, "readOnly": True})
            volumes.append({"name": "broker-login", "secret": {
                "secretName": args.broker_login_secret, "defaultMode": 0o440,
                "items": [{"key": "password", "path": "password"}],
            }})
            env.update(broker_env(spec))
        for config_map in spec.config_maps:
            mounts.append({"name": config_map, "mountPath": f"/etc/medplat/{config_map}", "readOnly": True})
            volumes.append({"name": config_map, "configMap": {"name": args.config_map_names[config_map]}})
        for volume in spec.volumes:
            mounts.append({"name": volume.name, "mountPath": volume.mount_path})
            volumes.append({"name": volume.name,
                            "persistentVolumeClaim": {"claimName": claims[volume.name].metadata.name}})
        if spec.config_files:
            mounts.append({"name": "files", "mountPath": "/etc/medplat/files", "readOnly": True})
            volumes.append({"name": "files", "configMap": {"name": self.files.metadata.name}})
        if spec.health is None:  # a job-only workload: its pods run to completion, nothing to probe
            probe = ready = None
        else:
            check = ({"httpGet": {"path": spec.health.path, "port": spec.health.port}} if spec.health.path
                     else {"tcpSocket": {"port": spec.health.port}})
            probe = {**check, "periodSeconds": 10}
            ready = ({"httpGet": {"path": spec.health.readiness_path, "port": spec.health.port}, "periodSeconds": 10}
                     if spec.health.readiness_path else probe)
        return {
            "serviceAccountName": self.service_account.metadata.name,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": spec.run_as_user,
                "runAsGroup": spec.run_as_user,
                "fsGroup": spec.run_as_user,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": spec.name,
                "image": args.image,
                "imagePullPolicy": "Always",
                **({"args": list(spec.args)} if spec.args else {}),
                "ports": [{"name": p.name, "containerPort": p.port, "protocol": p.protocol} for p in spec.ports],
                "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
                "resources": {
                    "requests": {"cpu": spec.resources.requests.cpu, "memory": spec.resources.requests.memory},
                    "limits": {"cpu": spec.resources.limits.cpu, "memory": spec.resources.limits.memory},
                },
                **({"livenessProbe": {**probe, "initialDelaySeconds": 10}, "readinessProbe": ready} if probe else {}),
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": spec.run_as_user,
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "privileged": False,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "volumeMounts": mounts,
            }],
            "volumes": volumes,
        }

    def _network_policy(self, args: WorkloadArgs) -> dict[str, Any]:
        spec = args.spec
        own_ports = [{"port": p.port, "protocol": p.protocol} for p in spec.ports]
        ingress = []
        for peer in spec.network.ingress_from:
            peers = _peer_selectors(peer, args.peers)
            if peers and own_ports:
                ingress.append({"from": peers, "ports": own_ports})
        egress = []
        for peer in spec.network.egress_to:
            peers = _peer_selectors(peer, args.peers)
            if not peers:
                continue
            rule: dict[str, Any] = {"to": peers}
            if peer in GROUP_PORTS:
                rule["ports"] = [{"port": GROUP_PORTS[peer], "protocol": "TCP"}]
            elif not peer.startswith("@"):
                rule["ports"] = [{"port": port, "protocol": "TCP"} for port in args.peers.workload_ports.get(peer, [])]
            egress.append(rule)
        return {
            "podSelector": {"matchLabels": selector_labels(spec.name)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        }


def _peer_selectors(peer: str, context: PeerContext) -> list[dict[str, Any]]:
    if peer == "@site-workloads":
        return [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": PART_OF}}}]
    if peer.startswith("@"):
        return [{"ipBlock": {"cidr": cidr}} for cidr in context.cidrs.get(peer, [])]
    if peer in context.workload_ports:
        return [{"podSelector": {"matchLabels": selector_labels(peer)}}]
    return []  # a peer that is not deployed at this site gets no allow rule


_SENSITIVITY = ["operational", "deidentified", "pseudonymized", "phi", "key-material"]


def _primary_class(spec: WorkloadSpec) -> str:
    classes = set(spec.data_classes.writes) | set(spec.data_classes.reads)
    return max(classes, key=_SENSITIVITY.index) if classes else "operational"
