"""FHIR de-identification driven by FHIRPath rules, in the configuration format of Microsoft's
FHIR Tools for Anonymization (`fhirPathRules` + `parameters`).

Semantics follow that tool: rules run in order over every resource (Bundle entries and
contained resources each as a resource of their own); a node handled by one rule — and every
descendant of it — is not touched by later rules; unmatched nodes are kept. medplat differs
where it must (README, "FHIR de-identification"): keys come from the project key domain,
never from the file; Narrative and Extension nodes no rule handled are removed; JSON keys the
FHIR R4 model does not know are removed; `pseudonymize` and the `patient` date-shift scope
are added; `encrypt` is refused (reversible output is the pseudonymizer's job).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import hmac
import re
import uuid
from typing import Any

import fhirpathpy
from fhirpathpy.models import models as fhirpath_models

from medplat.deid.config import Config, Rule
from medplat.deid.keys import KeyDomain
from medplat.deid.types import RESOURCE, fields_of, is_resource_type

DATE_TYPES = {"date", "dateTime", "instant"}
INNER_HOLDERS = {"Bundle", "Parameters"}
NUMBER_TYPES = {"decimal", "integer", "positiveInt", "unsignedInt", "integer64"}
REFERENCE_ID = re.compile(r"^(?P<prefix>(?:.*/)?(?P<type>[A-Z][A-Za-z]+)/)(?P<id>[A-Za-z0-9\-.]{1,64})"
                          r"(?P<suffix>/_history/.*)?$")
PATIENT_REFERENCE = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/.*)?$")
PATIENT_FIELDS = ("subject", "patient", "beneficiary", "individual")
MARK = "__medplat_node"
REDACT = "redact"
MAX_PLANS = 4096
R4_MODEL = fhirpath_models["r4"]
# HL7 v3 ObservationValue security labels, as Microsoft's tool sets them (meta.security).
SECURITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
SECURITY_LABELS = {"REDACTED": "redacted", "ABSTRED": "abstracted", "CRYTOHASH": "cryptographic hash function",
                   "PSEUDED": "pseudonymized", "PERTURBED": "exact value is replaced with another exact value",
                   "GENERALIZED": "exact value is replaced with a general value",
                   "SUBSTITUTED": "exact value is replaced with a predefined value"}
NO_SYSTEM = {"PERTURBED", "GENERALIZED", "SUBSTITUTED"}  # not v3-ObservationValue codes; Microsoft omits the system
LABEL_OF = {"cryptoHash": "CRYTOHASH", "pseudonymize": "PSEUDED", "dateShift": "PERTURBED", "perturb": "PERTURBED",
            "generalize": "GENERALIZED", "substitute": "SUBSTITUTED"}


class DeidError(ValueError):
    """A resource the configuration cannot process (processingErrors = raise)."""


class Node:
    """One element. A resource root also holds its scope: `nodes` in document order (inner
    resources excluded, they are scopes of their own), so a subtree is the slice pos:end."""
    # Class-level defaults: only what differs is stored per node (building is the hot path).
    value: Any = None
    processed = removed = resource = False
    replacement: Any = None         # substitute of a complex node: JSON emitted as is
    rule: Any = None                # the rule (or REDACT) that decided a primitive: recorded for plans
    labels: set[str] | None = None  # resource roots: what was done, as meta.security labels
    nodes: list["Node"]             # resource roots only
    inner: list[tuple["Node", dict[str, Any]]]  # resource roots only: contained / entry resources

    def __init__(self, type_: str, element: str, key: str, parent: "Node | None", repeats: bool,
                 primitive: bool) -> None:
        self.type, self.element, self.key, self.parent, self.repeats = type_, element, key, parent, repeats
        self.primitive = primitive
        self.children: list[Node] = []

    def walk(self) -> list["Node"]:
        """This node and its descendants, not entering inner resources."""
        return self.owner.nodes[self.pos:self.end]


def build(value: Any, type_: str, element: str = "", key: str = "", parent: Node | None = None,
          repeats: bool = False, owner: Node | None = None) -> Node:
    if not isinstance(value, dict):
        node = Node(type_, element, key, parent, repeats, True)
        node.value, node.owner, node.pos = value, owner, len(owner.nodes)
        node.end = node.pos + 1
        owner.nodes.append(node)
        return node
    resource = type_ == RESOURCE or (parent is None and is_resource_type(type_))
    if type_ == RESOURCE:
        type_ = str(value.get("resourceType"))
    node = Node(type_, element, key, parent, repeats, False)
    if resource:
        node.resource, node.nodes, node.inner = True, [], []
        if owner is not None:
            owner.inner.append((node, value))
        owner = node
    node.owner, node.pos = owner, len(owner.nodes)
    owner.nodes.append(node)
    fields = fields_of(type_)
    children = node.children
    for child_key, child_value in value.items():
        spec = fields.get(child_key)
        if spec is None:  # resourceType, or not an R4 element: nothing to reason about, so it does not leave
            continue
        if isinstance(child_value, list):
            for item in child_value:
                children.append(build(item, spec.type, spec.element, child_key, node, spec.repeats, owner))
        else:
            children.append(build(child_value, spec.type, spec.element, child_key, node, spec.repeats, owner))
    node.end = len(owner.nodes)
    return node


def emit(node: Node) -> Any:
    if node.replacement is not None:
        return node.replacement
    if node.primitive:
        return node.value
    out: dict[str, Any] = {"resourceType": node.type} if node.resource else {}
    for child in node.children:
        if child.removed:
            value = None
        else:
            value = emit(child)
            if value is None or value == {} or value == []:
                value = None
        if child.repeats:
            out.setdefault(child.key, []).append(value)
        elif value is not None:
            out[child.key] = value
    for key in [k for k, v in out.items() if isinstance(v, list) and k != "resourceType"]:
        _compact(out, key)
    if node.resource and node.labels and node.key != "contained":
        _add_labels(out, node.labels)
    return out if len(out) > (1 if node.resource else 0) else None


def _add_labels(out: dict[str, Any], labels: set[str]) -> None:
    security = out.setdefault("meta", {}).setdefault("security", [])
    present = {(c.get("system"), c.get("code")) for c in security}
    for code in SECURITY_LABELS:
        system = None if code in NO_SYSTEM else SECURITY_SYSTEM
        if code in labels and (system, code) not in present:
            security.append({"system": system, "code": code, "display": SECURITY_LABELS[code]} if system
                            else {"code": code, "display": SECURITY_LABELS[code]})


class _Leaf:
    """A primitive met while replaying a plan: what the methods read of a Node."""
    __slots__ = ("type", "element", "value", "parent", "path")
    primitive = True

    def __init__(self, type_: str, element: str, value: Any, parent_type: str, path: str) -> None:
        self.type, self.element, self.value, self.path = type_, element, value, path
        self.parent = _Parent(parent_type)


class _Parent:
    __slots__ = ("type",)

    def __init__(self, type_: str) -> None:
        self.type = type_


DROP, DROP_REDACTED = "drop", "drop-redacted"  # a complex node removed whole (silently / as a redaction)


def _record(root: Node) -> list[tuple[Any, int]]:
    """Per node in document order, with the end of its subtree: for a primitive the rule that
    decided it (REDACT for a redaction) or None; for a complex node DROP / DROP_REDACTED when it
    was removed whole, else None."""
    plan: list[tuple[Any, int]] = []
    nodes = root.nodes
    for node in nodes:
        if node.primitive:
            plan.append((node.rule if node.rule is not None else (DROP if node.removed else None), node.end))
        elif node.removed and node is not root:
            redacted = any(n.primitive and n.rule == REDACT and n.removed
                           for n in nodes[node.pos:node.end])
            plan.append((DROP_REDACTED if redacted else DROP, node.end))
        else:
            plan.append((None, node.end))
    return plan


def _compact(out: dict[str, Any], key: str) -> None:
    """Drop removed list items; a primitive list and its `_key` extension list stay aligned."""
    if key not in out or key.startswith("_") and key[1:] in out:
        return
    twin = "_" + key
    values = out[key]
    if twin in out and len(out[twin]) == len(values):
        keep = [i for i in range(len(values)) if values[i] is not None or out[twin][i] is not None]
        out[key] = [values[i] for i in keep]
        out[twin] = [out[twin][i] for i in keep]
        for k in (key, twin):
            if all(v is None for v in out[k]):
                del out[k]
        return
    kept = [v for v in values if v is not None]
    if kept:
        out[key] = kept
    else:
        del out[key]
    if twin in out:
        _compact(out, twin)


class Deidentifier:
    """Apply one configuration with one project key domain; thread-compatible, not thread-safe."""

    def __init__(self, config: Config, keys: KeyDomain, *, domain: str | None = None,
                 today: datetime.date | None = None) -> None:
        self.config, self.keys, self.domain = config, keys, domain  # domain: what "%domain" in a rule means
        self.params = config.parameters
        self.today = today or datetime.date.today()
        self._rules: dict[str, list[Rule]] = {}
        self._plans: dict[tuple, list[tuple[Any, int]]] = {}
        self._unplannable = False
        self._where_names = {step.name for rule in config.rules if rule.selector
                             for step in rule.selector.steps if step.kind == "where"}
        params = self.params
        self._plannable = (
            all(rule.selector is not None for rule in config.rules)
            and not any(rule.method == "generalize" for rule in config.rules)
            and not any(params.get(p) for p in ("enablePartialAgesForRedact", "enablePartialDatesForRedact",
                                                "enablePartialZipCodesForRedact")))

    # -- entry points -------------------------------------------------------------------
    def deidentify(self, resource: dict[str, Any]) -> dict[str, Any] | None:
        """A de-identified copy (None when nothing remains); the input is not modified."""
        if not isinstance(resource, dict) or not is_resource_type(str(resource.get("resourceType"))):
            raise DeidError(f"not a FHIR R4 resource: resourceType {resource.get('resourceType')!r}"
                            if isinstance(resource, dict) else "not a JSON object")
        if self._plannable and not resource.get("contained") and resource["resourceType"] not in INNER_HOLDERS:
            signature = self._signature(resource)
            if signature is not None:
                plan = self._plans.get(signature)
                if plan is not None:
                    return self._execute(plan, resource)
                self._unplannable = False
                root = build(resource, str(resource["resourceType"]))
                self._resource(root, resource, None)
                if not self._unplannable and len(self._plans) < MAX_PLANS:
                    self._plans[signature] = _record(root)
                return emit(root)
        root = build(resource, str(resource["resourceType"]))
        self._resource(root, resource, None)
        return emit(root)

    # -- plans: the decisions for one resource shape, replayed on the next of that shape ---------
    # Which rule decides which element depends on the shape alone when the configuration has
    # no value-dependent parts (partial redaction, generalize, FHIRPath fallbacks, complex
    # substitutes); then a resource with a known shape skips building, selection and emission
    # and its values go straight through the recorded methods. tests/test_deid_plans.py checks
    # both paths give the same output.
    def _signature(self, resource: dict[str, Any]) -> tuple | None:
        tokens: list[Any] = []
        if not self._shape(resource, resource["resourceType"], tokens):
            return None
        return tuple(tokens)

    def _shape(self, value: Any, type_: str, tokens: list[Any]) -> bool:
        fields = fields_of(type_)
        tokens.append("{")
        for key, child in value.items():
            spec = fields.get(key)
            if spec is None:
                continue
            for item in (child if isinstance(child, list) else (child,)):
                if isinstance(item, dict):
                    tokens.append(key)
                    if spec.type == RESOURCE or not self._shape(item, spec.type, tokens):
                        return False
                else:
                    tokens.append(key + "=")
                    if key == "reference" and type_ == "Reference":
                        text_value = str(item)
                        if text_value.startswith("#"):
                            return False  # a local reference: resolved against contained resources
                        match = REFERENCE_ID.match(text_value)
                        tokens.append(match["type"] if match else None)
                    elif spec.element in self._where_names:
                        tokens.append(item)
        tokens.append("}")
        return True

    def _execute(self, plan: list[tuple[Any, int]], resource: dict[str, Any]) -> dict[str, Any] | None:
        context = _Context(self, None, resource, self.patient_key(resource))
        labels: set[str] = set()
        out = self._replay(resource, resource["resourceType"], plan, [0], context, labels, "", True)
        if out is not None and labels:
            _add_labels(out, labels)
        return out

    def _replay(self, value: dict[str, Any], type_: str, plan, position: list[int], context, labels, path: str,
                root: bool = False) -> Any:
        action, end = plan[position[0]]
        if action == DROP or action == DROP_REDACTED:  # a complex node removed whole
            if action == DROP_REDACTED:
                labels.add("REDACTED")
            position[0] = end
            return None
        position[0] += 1
        fields = fields_of(type_)
        out: dict[str, Any] = {"resourceType": type_} if root else {}
        for key, child in value.items():
            spec = fields.get(key)
            if spec is None:
                continue
            items = child if isinstance(child, list) else (child,)
            for index, item in enumerate(items):
                item_path = f"{path}.{key}[{index}]" if path else f"{key}[{index}]"
                if isinstance(item, dict):
                    result = self._replay(item, spec.type, plan, position, context, labels, item_path)
                else:
                    result = self._leaf(item, spec, type_, plan[position[0]][0], context, labels, item_path)
                    position[0] += 1
                if result == {} or result == []:
                    result = None
                if spec.repeats:
                    out.setdefault(key, []).append(result)
                elif result is not None:
                    out[key] = result
        for key in [k for k, v in out.items() if isinstance(v, list)]:
            _compact(out, key)
        return out if len(out) > (1 if root else 0) else None

    def _leaf(self, value: Any, spec, parent_type: str, action, context, labels: set[str], path: str) -> Any:
        if action is None or value is None:
            return value
        if action == DROP:
            return None
        leaf = _Leaf(spec.type, spec.element, value, parent_type, path)
        if action == REDACT:
            partial = self._partial(leaf)
            labels.add("REDACTED" if partial is None or leaf.type in DATE_TYPES else "ABSTRED")
            return partial
        try:
            result = self._method(action, leaf, context)
        except (ValueError, TypeError) as exc:
            if self.config.processing_errors == "raise":
                raise DeidError(f"{action.path} ({action.method}) on {context.raw.get('resourceType')}: {exc}") \
                    from None
            result = None
        if result is None:
            labels.add("REDACTED")
        elif action.method in LABEL_OF and result != value:
            labels.add(LABEL_OF[action.method])
        return result

    def patient_key(self, resource: dict[str, Any]) -> str | None:
        """The patient a resource belongs to (the key of its date shift), from its own data."""
        if resource.get("resourceType") == "Patient" and resource.get("id"):
            return str(resource["id"])
        for name in PATIENT_FIELDS:
            reference = resource.get(name)
            if isinstance(reference, dict):
                match = PATIENT_REFERENCE.search(str(reference.get("reference", "")))
                if match:
                    return match.group(1)
        return None

    # -- per resource -------------------------------------------------------------------
    def _rules_for(self, resource_type: str) -> list[Rule]:
        rules = self._rules.get(resource_type)
        if rules is None:
            rules = self._rules[resource_type] = [
                r for r in self.config.rules
                if not r.resource_type or r.resource_type in (resource_type, "Resource", "DomainResource")]
        return rules

    def _resource(self, root: Node, raw: dict[str, Any], outer_patient: str | None) -> None:
        patient = self.patient_key(raw) or outer_patient
        # Read before any rule rewrites an id or a reference: which entry each reference names.
        links = _bundle_links(root) if root.type == "Bundle" and self.params.get("bundleReferences") == "relink" \
            else None
        if root.labels is None:
            root.labels = set()
        for inner, inner_raw in root.inner:
            self._resource(inner, inner_raw, patient)
            if inner.key == "resource":  # a Bundle reports what was done to its entries, as Microsoft's does
                root.labels |= inner.labels or set()
        context = _Context(self, root, raw, patient)
        container = _container(root)
        if container is not None:
            root.labels = container.labels
        context.labels = root.labels
        for rule in self._rules_for(root.type):
            for node in context.select(rule):
                if not node.processed:
                    self._apply(rule, node, context)
        _drop_dangling_local_references(root)
        for node in root.walk():  # what no rule decided about: narrative and extensions never leave
            if not node.processed and (node.type == "Narrative" or node.type == "Extension"
                                       and not self.params.get("keepUnknownExtensions")):
                node.removed = True
        if links is not None:
            self._relink(*links)

    def _relink(self, entries: list["_Entry"], references: list[tuple[Node, int]]) -> None:
        """Each surviving entry gets a keyed `urn:uuid:` fullUrl and every reference that named an
        entry now names that fullUrl, so references resolve by the Bundle rules (R4 2.36.4.1)
        whatever the rules did to ids; a reference to an entry that did not survive is removed."""
        urns: dict[int, str] = {}
        for index, entry in enumerate(entries):
            if entry.resource is None or entry.node.removed or entry.resource.removed or emit(entry.resource) is None:
                continue
            digest = bytes.fromhex(self.keys.hash(f"bundle-entry|{index}|{entry.url or entry.local or ''}")[:32])
            urns[index] = f"urn:uuid:{uuid.UUID(bytes=digest, version=4)}"
            full = entry.full
            if full is None:
                full = Node("uri", "fullUrl", "fullUrl", entry.node, False, True)
                entry.node.children.insert(0, full)
            full.value, full.removed, full.processed, full.replacement = urns[index], False, True, None
        for node, target in references:
            if node.removed:
                continue  # a rule removed the reference (e.g. a performer): it stays removed
            node.processed = True
            if target in urns:
                node.value = urns[target]
            else:
                node.removed = True

    def _apply(self, rule: Rule, node: Node, context: "_Context") -> None:
        method = rule.method
        if method == "redact" and node.resource and node.parent is not None:  # a contained resource as a whole
            node.removed = node.processed = True
            return
        types = rule.options.get("referenceTypes")
        if types and _reference_type(node) not in types:
            return  # not a reference to one of those types: left to later rules
        if method == "substitute" and not node.primitive:
            self._unplannable = True  # the merge depends on what earlier rules left
            # What earlier rules already decided inside the node survives, as in Microsoft's tool.
            node.replacement = _merge(json.loads(json.dumps(rule.options["replaceWith"])), _emit_processed(node))
            context.labels.add("SUBSTITUTED")
            for each in node.walk():
                each.processed = True
            return
        if method == "redact":
            self._redact(node, context.labels)
            return
        for each in node.walk():
            if each.processed:
                continue
            each.processed = True
            each.rule = rule
            if each.removed or not each.primitive or each.value is None:
                if method == "perturb" and not each.primitive and each is node:
                    value = next((c for c in each.children if c.element == "value" and not c.processed), None)
                    if value is not None:
                        value.processed, value.rule = True, rule
                        value.value = self._perturb(rule, value, context)
                continue
            before = each.value
            try:
                each.value = self._method(rule, each, context)
            except (ValueError, TypeError) as exc:
                if self.config.processing_errors == "raise":
                    raise DeidError(f"{rule.path} ({method}) on {context.root.type}: {exc}") from None
                each.removed = True  # 'skip' and 'keep' alike: never emit what could not be processed
            if each.value is None:
                each.removed = True
                context.labels.add("REDACTED")
            elif method in LABEL_OF and each.value != before:
                context.labels.add(LABEL_OF[method])

    def _method(self, rule: Rule, node: Node, context: "_Context") -> Any:
        method = rule.method
        if method == "keep":
            return node.value
        if method == "dateShift":
            return self._date_shift(node, context) if node.type in DATE_TYPES else node.value
        if method == "cryptoHash":
            return self._reference_or_plain(node, self.keys.hash)
        if method == "pseudonymize":
            domain = rule.options["domain"]
            if domain == "%domain":
                if not self.domain:
                    raise DeidError(f"{rule.path}: the configuration needs a pseudonym domain")
                domain = self.domain
            return self._reference_or_plain(node, lambda v: self.keys.pseudonym(domain, v))
        if method == "substitute":
            return rule.options["replaceWith"]
        if method == "perturb":
            return self._perturb(rule, node, context, getattr(node, "path", None))
        if method == "generalize":
            return self._generalize(rule, node)
        raise DeidError(f"unsupported method {method!r}")

    def _date_shift(self, node: Node, context: "_Context") -> str | None:
        value = str(node.value)
        if len(value) < 10 or self._over_89(value):  # partial dates cannot be shifted: redacted
            return self._partial(node)
        return shift(value, context.shift_days(), bool(self.params.get("dateShiftKeepTime")))

    def _over_89(self, value: str) -> bool:
        return value[:4].isdigit() and self.today.year - int(value[:4]) > 89

    def _reference_or_plain(self, node: Node, transform) -> str:
        value = str(node.value)
        if _is_reference(node):
            if value.startswith("#"):
                return "#" + transform(value[1:]) if len(value) > 1 else value
            match = REFERENCE_ID.match(value)
            if match:
                return f"{match['type']}/{transform(match['id'])}"
            if value.startswith("urn:uuid:") or value.startswith("urn:oid:"):
                return value[:9 if value.startswith("urn:uuid:") else 8] + transform(value)
        return transform(value)

    # -- redact with the Safe Harbor partial options ---------------------------------------
    def _redact(self, node: Node, labels: set[str]) -> bool:
        """Remove the unprocessed part of a subtree; True when the node is gone."""
        if node.processed:
            return node.removed
        node.processed = True
        if node.resource and node.parent is not None:  # inner resources went through their own rules
            return False
        if node.primitive:
            node.rule = REDACT
            if node.value is None:
                return False
            partial = self._partial(node)
            labels.add("REDACTED" if partial is None or node.type in DATE_TYPES else "ABSTRED")
            node.value, node.removed = partial, partial is None
            return node.removed
        if node.type == "Age" and self.params.get("enablePartialAgesForRedact"):
            value = next((c.value for c in node.children if c.element == "value"), None)
            if isinstance(value, (int, float)) and value < 90:
                for each in node.walk():
                    each.processed = True
                return False
        remaining = [not self._redact(child, labels) for child in node.children]
        node.removed = not any(remaining) and node.replacement is None
        return node.removed

    def _partial(self, node: Node) -> Any:
        value = node.value
        if node.type in DATE_TYPES and self.params.get("enablePartialDatesForRedact") and isinstance(value, str):
            return value[:4] if value[:4].isdigit() and not self._over_89(value) else None
        if (node.element == "postalCode" and node.parent is not None and node.parent.type == "Address"
                and self.params.get("enablePartialZipCodesForRedact") and isinstance(value, str)):
            digits = value.strip()
            if len(digits) < 3:
                return None
            restricted = set(self.params.get("restrictedZipCodeTabulationAreas") or [])
            return "0" * len(digits) if digits[:3] in restricted else digits[:3] + "0" * (len(digits) - 3)
        return None

    # -- numeric and generalization -------------------------------------------------------
    def _perturb(self, rule: Rule, node: Node, context: "_Context", path: str | None = None) -> Any:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"perturb needs a number, got {type(value).__name__}")
        span = float(rule.options.get("span", 0))
        if rule.options.get("rangeType", "fixed") == "proportional":
            span *= abs(value)
        # Keyed and repeatable: the same release of the same data gives the same noise.
        seed = f"perturb|{context.scope_key()}|{path if path is not None else _path(node)}|{value}".encode()
        fraction = int.from_bytes(hmac.new(self.keys.project, seed, hashlib.sha256).digest()[:8], "big") / 2**64
        noisy = value + (fraction - 0.5) * span
        digits = int(rule.options.get("roundTo", 2))
        if node.type in NUMBER_TYPES - {"decimal"}:
            return int(round(noisy))
        return round(noisy, digits) if digits else int(round(noisy))

    def _generalize(self, rule: Rule, node: Node) -> Any:
        for condition, output in rule.options["cases"].items():
            if _fhirpath(condition, node.value) == [True]:
                result = _fhirpath(output, node.value)
                return result[0] if result else None
        return node.value if rule.options.get("otherValues", "redact") == "keep" else None


def _emit_processed(node: Node) -> Any:
    if node.removed or not node.processed and node.primitive:
        return None
    if node.primitive:
        return node.value
    out: dict[str, Any] = {}
    for child in node.children:
        value = _emit_processed(child)
        if value not in (None, {}, []):
            if child.repeats:
                out.setdefault(child.key, []).append(value)
            else:
                out[child.key] = value
    return out or None


def _merge(base: Any, kept: Any) -> Any:
    if isinstance(base, dict) and isinstance(kept, dict):
        for key, value in kept.items():
            base[key] = _merge(base.get(key), value) if key in base else value
        return base
    return kept if kept is not None else base


def _container(root: Node) -> Node | None:
    """The resource a contained resource belongs to (its labels are the container's)."""
    if root.key != "contained":
        return None
    node = root.parent
    while node is not None and not node.resource:
        node = node.parent
    return node


def _is_reference(node: Node) -> bool:
    return node.element == "reference" and node.parent is not None and node.parent.type == "Reference"


def _reference_type(node: Node) -> str | None:
    match = REFERENCE_ID.match(str(node.value)) if _is_reference(node) else None
    return match["type"] if match else None


RESTFUL = re.compile(r"^(?P<base>https?://.+)/[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")
ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


class _Entry:
    """A Bundle entry as it arrived: its node, fullUrl node and value, resource node, Type/id."""
    __slots__ = ("node", "full", "url", "resource", "local")

    def __init__(self, node: Node) -> None:
        self.node = node
        self.full = next((c for c in node.children if c.key == "fullUrl" and c.primitive), None)
        self.url = self.full.value if self.full is not None and isinstance(self.full.value, str) else None
        self.resource = next((c for c in node.children if c.key == "resource" and c.resource), None)
        rid = next((c.value for c in self.resource.children if c.key == "id"), None) if self.resource else None
        self.local = f"{self.resource.type}/{rid}" if rid is not None else None


def _bundle_links(root: Node) -> tuple[list[_Entry], list[tuple[Node, int]]]:
    """The entries of a Bundle and, per Reference.reference inside them, the entry it resolves
    to: absolute references match a fullUrl; `Type/id` is read against the base of the
    referring entry's RESTful fullUrl (R4 2.36.4.1), else — for producers that leave fullUrl
    out or use URNs — matched to the one entry whose resource has that Type/id."""
    entries = [_Entry(child) for child in root.children if child.key == "entry"]
    by_url: dict[str, int] = {}
    by_local: dict[str, int | None] = {}
    for index, entry in enumerate(entries):
        if entry.url:
            by_url.setdefault(entry.url, index)
        if entry.local:
            by_local[entry.local] = None if entry.local in by_local else index  # ambiguous: resolves to none
    references = []
    for index, entry in enumerate(entries):
        if entry.resource is None:
            continue
        restful = RESTFUL.match(entry.url or "")
        for node in _reference_nodes(entry.resource):
            value = node.value.split("/_history/")[0] if isinstance(node.value, str) else ""
            if not value or value.startswith("#"):
                continue
            if ABSOLUTE.match(value):
                target = by_url.get(value)
            else:
                target = by_url.get(f"{restful['base']}/{value}") if restful else None
                if target is None:
                    target = by_local.get(value)
            if target is not None:
                references.append((node, target))
    return entries, references


def _reference_nodes(resource: Node) -> list[Node]:
    """Reference.reference nodes of a resource and its contained resources (not nested Bundles)."""
    found = [node for node in resource.nodes if _is_reference(node)]
    for inner, _raw in resource.inner:
        if inner.key == "contained":
            found += _reference_nodes(inner)
    return found


def _drop_dangling_local_references(root: Node) -> None:
    """A '#id' reference whose contained resource was removed would point nowhere: drop it."""
    contained = {c.value for n in root.children if n.key == "contained" and not n.removed
                 for c in n.children if c.key == "id"}
    for node in root.walk():
        if _is_reference(node) and isinstance(node.value, str) and node.value.startswith("#") \
                and len(node.value) > 1 and node.value[1:] not in contained:
            node.removed = node.processed = True


def _fhirpath(expression: str, value: Any) -> list[Any]:
    # $this at the root is not bound by fhirpathpy; the value travels as %value instead.
    return fhirpathpy.evaluate({}, expression.replace("$this", "%value"), {"value": value})


def _path(node: Node) -> str:
    parts = []
    while node is not None and not node.resource:
        index = sum(1 for s in node.parent.children if s.key == node.key and s is not node
                    and node.parent.children.index(s) < node.parent.children.index(node)) if node.parent else 0
        parts.append(f"{node.key}[{index}]")
        node = node.parent
    return ".".join(reversed(parts))


ZONE = re.compile(r"(Z|[+-]\d\d:\d\d)$")


def shift(value: str, days: int, keep_time: bool = False) -> str:
    """Shift a full FHIR date/dateTime/instant by whole days. As in Microsoft's tool the time of
    day becomes 00:00:00 (zone kept) unless keep_time (medplat's telemetry keeps intervals)."""
    if not isinstance(value, str) or len(value) < 10 or value[4:5] != "-" or value[7:8] != "-":
        raise ValueError(f"not a full FHIR date: {value!r}")
    day = (datetime.date(int(value[:4]), int(value[5:7]), int(value[8:10])) + datetime.timedelta(days)).isoformat()
    if len(value) == 10 or keep_time:
        return day + value[10:]
    zone = ZONE.search(value)
    return day + "T00:00:00" + (zone.group(1) if zone else "")


class _Context:
    """One resource being processed: its nodes, its patient and its shift."""

    def __init__(self, owner: Deidentifier, root: Node, raw: dict[str, Any], patient: str | None) -> None:
        self.owner, self.root, self.raw, self.patient = owner, root, raw, patient
        self._by_type: dict[str, list[Node]] | None = None
        self._marked: tuple[dict[str, Any], list[Node]] | None = None
        self._shift: int | None = None
        self.labels: set[str] = set()

    def scope_key(self) -> str:
        scope = self.owner.params.get("dateShiftScope", "resource")
        if scope == "patient" and self.patient:
            return "patient|" + self.patient
        if scope in ("file", "folder"):  # one run is one scope
            return "run|" + scope
        return f"resource|{self.raw.get('resourceType')}/{self.raw.get('id', '')}"

    def shift_days(self) -> int:
        if self._shift is None:
            key = self.scope_key()
            self._shift = self.owner.keys.shift_days(key.removeprefix("patient|"))
        return self._shift

    def nodes_of_type(self, type_: str) -> list[Node]:
        if self._by_type is None:
            self._by_type = {}
            for node in self.root.nodes:
                self._by_type.setdefault(node.type, []).append(node)
        return self._by_type.get(type_, [])

    def select(self, rule: Rule) -> list[Node]:
        selector = rule.selector
        if selector is None:
            return self._fhirpath(rule)
        current = self.nodes_of_type(selector.start_type) if selector.start_type is not None else [self.root]
        for step in selector.steps:
            if not current:
                return current
            if step.kind == "child":
                name = step.name
                current = [c for n in current for c in n.children if c.element == name and not c.removed]
            elif step.kind == "where":
                current = [n for n in current if any(c.element == step.name and c.value == step.literal
                                                     for c in n.children)]
            elif step.kind == "as":
                current = [n for n in current if n.type == step.name]
        return current

    def _fhirpath(self, rule: Rule) -> list[Node]:
        """Expressions beyond plain paths: fhirpathpy on a copy whose objects carry node numbers."""
        if self._marked is None:
            nodes: list[Node] = []
            self._marked = (_mark(self.root, nodes), nodes)
        marked, nodes = self._marked
        expression, last = rule.fallback
        try:
            results = fhirpathpy.evaluate(marked, expression, model=R4_MODEL)
        except Exception as exc:  # fhirpathpy raises plain Exceptions on bad input
            raise DeidError(f"FHIRPath {rule.path!r}: {exc}") from None
        selected = [nodes[r[MARK]] for r in results if isinstance(r, dict) and MARK in r]
        if last:
            selected = [c for n in selected for c in n.children if c.element == last]
        return selected


def _mark(node: Node, nodes: list[Node]) -> Any:
    if node.primitive:
        return node.value
    out: dict[str, Any] = {MARK: len(nodes)}
    nodes.append(node)
    if node.resource:
        out["resourceType"] = node.type
    for child in node.children:
        value = _mark(child, nodes) if not child.resource else {"resourceType": child.type}
        if child.repeats:
            out.setdefault(child.key, []).append(value)
        else:
            out[child.key] = value
    return out
