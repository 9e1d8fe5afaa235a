"""The data-flow residency proof: PHI and key material never leave the EU zone un-anonymized.

Follows the resource graph — resource dependencies, and each workload's declared data
classes and egress peers (from its flow annotations) — and fails every path on which `phi`
or `key-material` reaches something outside the EU (an AWS resource, the analytics zone, or
an address outside the known peers) without first passing an anonymizer or pseudonymizer.
"""
from __future__ import annotations

from collections import deque

from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatStackPolicy
from medplat.policies.lib import SENSITIVE, WORKLOAD_KINDS, annotations, csv, data_class, labels

META = Meta(
    id="dataflow-residency",
    description="No path in the resource graph carries phi or key-material out of the EU zone unless it "
                "passes an anonymizer or pseudonymizer workload; only a de-identifying workload (the "
                "analytics feed) may send to the de-identified analytics bucket.",
    severity=Severity.CRITICAL,
    rationale="Residency is a property of flows, not only of stores: a compliant bucket is no help if a "
              "workload streams PHI to it from outside the EU.",
    remediation="Route the data through the dicom-anonymizer or pseudonymizer workload first, or keep the "
                "consumer in the EU PHI zone / at the edge.",
    # Every resource that holds or handles phi / key-material: the paths from each are followed.
    scope=lambda resources: [r.urn for r in resources if _carried(r)],
)
TRANSFORMERS = {"anonymizer", "pseudonymizer"}
INTERNET = "internet (an address outside the declared peers)"
INSIDE_ZONES = {"eu-phi", "edge"}


class Graph:
    def __init__(self, resources) -> None:
        self.by_urn = {r.urn: r for r in resources}
        self.edges: dict[str, set[str]] = {urn: set() for urn in self.by_urn}
        self.edges[INTERNET] = set()
        self.zone_nodes: dict[str, str] = {}
        for resource in resources:
            for dependency in resource.dependencies or []:
                if dependency.urn in self.edges:
                    self.edges[dependency.urn].add(resource.urn)  # data flows from what is referenced
        self._workload_edges(resources)
        self._open_egress(resources)

    def _workload_edges(self, resources) -> None:
        workloads = {}
        for resource in resources:
            if resource.resource_type in WORKLOAD_KINDS:
                note = annotations(resource.props)
                namespace = (resource.props.get("metadata") or {}).get("namespace")
                workloads[(namespace, note.get("medplat.io/workload") or resource.name)] = resource
        for (namespace, _name), resource in workloads.items():
            note = annotations(resource.props)
            zones = dict(item.split("=", 1) for item in csv(note.get("medplat.io/egress-zones")))
            for peer in csv(note.get("medplat.io/egress")):
                if peer.startswith("@"):
                    target = self._zone_node(zones.get(peer))
                else:
                    target = getattr(workloads.get((namespace, peer)), "urn", None)
                if target:
                    self.edges[resource.urn].add(target)

    def _zone_node(self, zone: str | None) -> str:
        node = f"zone:{zone}" if zone else INTERNET
        self.edges.setdefault(node, set())
        return node

    def _open_egress(self, resources) -> None:
        """Raw NetworkPolicies that allow egress to the whole internet open a path out."""
        for policy in (r for r in resources if r.resource_type == "kubernetes:networking.k8s.io/v1:NetworkPolicy"):
            spec = policy.props.get("spec") or {}
            opens = any((peer.get("ipBlock") or {}).get("cidr") in ("0.0.0.0/0", "::/0")
                        for rule in spec.get("egress") or [] for peer in rule.get("to") or [])
            if not opens:
                continue
            selector = (spec.get("podSelector") or {}).get("matchLabels") or {}
            namespace = (policy.props.get("metadata") or {}).get("namespace")
            for urn, resource in self.by_urn.items():
                if resource.resource_type not in WORKLOAD_KINDS:
                    continue
                meta = resource.props.get("metadata") or {}
                pod_labels = (((resource.props.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
                if meta.get("namespace") == namespace and all(pod_labels.get(k) == v for k, v in selector.items()):
                    self.edges[urn].add(INTERNET)

    def zone(self, urn: str) -> str | None:
        if urn.startswith("zone:"):
            return urn[len("zone:"):]
        resource = self.by_urn.get(urn)
        seen = 0
        while resource is not None and seen < 64:
            zone = labels(resource.resource_type, resource.props).get("medplat:zone")
            if zone:
                return zone
            resource, seen = resource.parent, seen + 1
        return None

    def outside(self, urn: str) -> bool:
        if urn == INTERNET:
            return True
        resource = self.by_urn.get(urn)
        if resource is not None and resource.resource_type.startswith("aws:"):
            return True
        zone = self.zone(urn)
        return zone is not None and zone not in INSIDE_ZONES

    def name(self, urn: str) -> str:
        resource = self.by_urn.get(urn)
        return resource.name if resource is not None else urn


def _carried(resource) -> set[str]:
    """Sensitive classes a node holds or handles."""
    classes = {data_class(resource.resource_type, resource.props)}
    if resource.resource_type in WORKLOAD_KINDS:
        note = annotations(resource.props)
        classes |= csv(note.get("medplat.io/reads")) | csv(note.get("medplat.io/writes"))
    return classes & set(SENSITIVE)


def _transformer(resource) -> set[str] | None:
    """For an anonymizer/pseudonymizer: the classes it emits; None for other nodes."""
    if resource is None or resource.resource_type not in WORKLOAD_KINDS:
        return None
    note = annotations(resource.props)
    if csv(note.get("medplat.io/roles")) & TRANSFORMERS:
        return csv(note.get("medplat.io/writes"))
    return None


def check(args, report):
    graph = Graph(args.resources)
    reported: set[tuple[str, str, str]] = set()
    for source_urn, source in graph.by_urn.items():
        for data in _carried(source):
            if graph.outside(source_urn):
                key = (source_urn, data, source_urn)
                if key not in reported:
                    reported.add(key)
                    report(f"{data} is handled by '{source.name}', which is outside the EU zone "
                           f"({graph.zone(source_urn) or 'AWS'})", source_urn)
                continue
            if _transformer(source) is not None and data not in _transformer(source):
                continue  # an anonymizer's output no longer carries what it read
            queue, parents = deque([source_urn]), {source_urn: None}
            while queue:
                node = queue.popleft()
                for target in sorted(graph.edges.get(node, ())):
                    if target in parents:
                        continue
                    parents[target] = node
                    emitted = _transformer(graph.by_urn.get(target))
                    if emitted is not None and data not in emitted:
                        continue  # passes an anonymizer/pseudonymizer: the path ends clean here
                    if graph.outside(target):
                        key = (source_urn, data, target)
                        if key not in reported:
                            reported.add(key)
                            path, step = [], target
                            while step is not None:
                                path.append(graph.name(step))
                                step = parents[step]
                            report(f"{data} flows out of the EU zone without anonymization: "
                                   f"{' -> '.join(reversed(path))}", source_urn)
                        continue
                    queue.append(target)
    _only_deidentifiers_reach_the_bucket(args.resources, report)


ANALYTICS_BUCKET = "@analytics-bucket"


def _only_deidentifiers_reach_the_bucket(resources, report) -> None:
    """The de-identified bucket is fed by one kind of flow: a workload with the anonymizer role
    that writes only de-identified data (the analytics feed). Anything else naming the bucket
    as a peer would be a second, unproven path into it."""
    for resource in resources:
        if resource.resource_type not in WORKLOAD_KINDS:
            continue
        note = annotations(resource.props)
        if ANALYTICS_BUCKET not in csv(note.get("medplat.io/egress")):
            continue
        roles, writes = csv(note.get("medplat.io/roles")), csv(note.get("medplat.io/writes"))
        if "anonymizer" not in roles or not writes or writes - {"deidentified"}:
            report(f"'{resource.name}' sends to the de-identified analytics bucket but is not a de-identifier "
                   f"writing only deidentified data (roles {sorted(roles)}, writes {sorted(writes)})", resource.urn)


POLICY = MedplatStackPolicy(META, check)
