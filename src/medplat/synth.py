"""Offline synthesis: run the real program under `pulumi.runtime.set_mocks`.

No Pulumi CLI, no cloud credentials, nothing deployed. A recording MockMonitor sees every
registration with its parent, provider and dependencies; the mocks echo inputs back and
add clearly fake, deterministic placeholders for values only a cloud could compute.
StackReferences are answered with the referenced stack's synthesized outputs.
"""
from __future__ import annotations

import asyncio
import base64
import contextvars
import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pulumi
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor, MockResourceArgs, Mocks

from medplat import config as stack_config
from medplat import program
from medplat.inventory import Inventory, Resource, attribute, provider_urn
from medplat.paths import stack_file

PROJECT = "medplat"
PLANNED_ACCOUNT = "000000000000"
SECRET_PLACEHOLDER = "[secret: not decrypted offline]"


from medplat.errors import SynthError  # noqa: E402,F401  (defined without Pulumi for the CLI)


def _placeholder_ip(seed: str) -> str:
    # RFC 5737 TEST-NET-2: can never be a real deployed address.
    return f"198.51.100.{int(hashlib.sha256(seed.encode()).hexdigest(), 16) % 200 + 20}"


class PlannedMocks(Mocks):
    def __init__(self, stack_outputs: dict[str, dict[str, Any]], region: str | None) -> None:
        self.stack_outputs = stack_outputs
        self.region = region or "planned-region"

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict]:
        state = dict(args.inputs)
        if args.typ == "pulumi:pulumi:StackReference":
            name = str(args.inputs.get("name", args.name))
            if name not in self.stack_outputs:
                raise SynthError(f"StackReference {name!r}: no synthesized stack of that name")
            return name, {"name": name, "outputs": self.stack_outputs[name], "secretOutputNames": []}
        resource_id = f"planned-{args.name}"
        token = args.typ
        if token.startswith("aws:"):
            service = token.split(":")[1].split("/")[0]
            state.setdefault("arn", f"arn:aws:{service}:{self.region}:{PLANNED_ACCOUNT}:{args.name}")
            if token == "aws:kms/key:Key":
                state.setdefault("keyId", resource_id)
            if token == "aws:lb/loadBalancer:LoadBalancer":
                state.setdefault("dnsName", f"{args.name}.planned.invalid")
            if token == "aws:s3/bucket:Bucket":
                state.setdefault("bucket", f"{state.get('bucketPrefix', 'bucket-')}planned")
                resource_id = state["bucket"]
        elif token == "openstack:networking/floatingIp:FloatingIp":
            state.setdefault("address", _placeholder_ip(args.name))
        elif token == "openstack:containerinfra/cluster:Cluster":
            state.setdefault("nodeAddresses", [f"10.20.0.{10 + i}" for i in range(int(state.get("nodeCount", 1)))])
            state.setdefault("kubeconfig", {"raw_config": "planned-kubeconfig"})
        elif token == "openstack:loadbalancer/loadBalancer:LoadBalancer":
            state.setdefault("vipPortId", f"planned-{args.name}-vip-port")
        elif token == "openstack:keymanager/orderV1:OrderV1":
            state.setdefault("orderRef", f"https://barbican.planned.invalid/v1/orders/{args.name}")
        elif token == "openstack:objectstorage/container:Container":
            state.setdefault("name", args.name)
        elif token.startswith("tls:"):
            state.setdefault("privateKeyPem", f"planned private key of {args.name}")
            state.setdefault("certPem", f"planned certificate of {args.name}")
            state.setdefault("certRequestPem", f"planned CSR of {args.name}")
        elif token == "random:index/randomPassword:RandomPassword":
            # What the provider generates; a fixed planned value offline (its uses are secrets, masked).
            state.setdefault("result", f"planned-password-{hashlib.sha256(args.name.encode()).hexdigest()[:24]}")
        elif token == "random:index/randomBytes:RandomBytes":
            planned = hashlib.sha256(args.name.encode()).digest()[:int(state.get("length", 16))]
            state.setdefault("base64", base64.b64encode(planned).decode())
            state.setdefault("hex", planned.hex())
        elif token.startswith("kubernetes:") and isinstance(state.get("metadata"), dict):
            state["metadata"] = {**state["metadata"], "name": state["metadata"].get("name", args.name)}
        return resource_id, state

    def call(self, args) -> dict:
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": PLANNED_ACCOUNT, "arn": f"arn:aws:iam::{PLANNED_ACCOUNT}:root",
                    "id": PLANNED_ACCOUNT, "userId": "planned"}
        if args.token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"}
        raise SynthError(f"the program called {args.token}, which offline synthesis cannot answer")


class RecordingMonitor(MockMonitor):
    """MockMonitor that keeps every registration's parent, provider and dependencies."""

    def __init__(self, mocks: Mocks) -> None:
        super().__init__(mocks)
        self.records: dict[str, Resource] = {}
        self.component_outputs: dict[str, dict[str, Any]] = {}
        self.private_keys: list[str] = []  # "URN path" of PEM private key text, secrets unmasked

    def RegisterResource(self, request):  # noqa: N802 (gRPC method name)
        response = super().RegisterResource(request)
        self._scan(response.urn, rpc.deserialize_properties(request.object))
        if request.type != "pulumi:pulumi:Stack":
            self.records[response.urn] = Resource(
                urn=response.urn, type=request.type, name=request.name, custom=bool(request.custom),
                parent=_parent(request.parent),
                provider=provider_urn(request.provider),
                inputs=_plain(rpc.deserialize_properties(request.object)),
                dependencies=list(request.dependencies),
                property_dependencies={k: list(v.urns) for k, v in request.propertyDependencies.items()},
            )
        return response

    def ReadResource(self, request):  # noqa: N802
        response = super().ReadResource(request)
        urn = response.urn
        self.records[urn] = Resource(
            urn=urn, type=request.type, name=request.name, custom=True,
            parent=_parent(request.parent),
            provider=provider_urn(request.provider),
            inputs=_plain(rpc.deserialize_properties(request.properties)),
            dependencies=list(request.dependencies),
        )
        return response

    def RegisterResourceOutputs(self, request):  # noqa: N802
        raw = rpc.deserialize_properties(request.outputs)
        self._scan(request.urn, raw)
        self.component_outputs[request.urn] = _plain(raw)
        return super().RegisterResourceOutputs(request)


    def _scan(self, urn: str, raw: Any) -> None:
        """The inventory masks secrets, but state holds them (encrypted): look inside them too."""
        self.private_keys += [f"{urn} {path}" for path in pem_paths(raw)]


PEM_PRIVATE_KEY = "PRIVATE KEY-----"


def pem_paths(node: Any, path: str = "") -> list[str]:
    """Where PEM private key text sits in a value (secret-wrapped values included)."""
    if isinstance(node, str):
        return [path or "value"] if PEM_PRIVATE_KEY in node else []
    if isinstance(node, dict):
        if node.get(rpc._special_sig_key) == rpc._special_secret_sig:
            return pem_paths(node.get("value"), path)
        return [p for key, value in node.items() for p in pem_paths(value, f"{path}.{key}" if path else str(key))]
    if isinstance(node, (list, tuple)):
        return [p for index, value in enumerate(node) for p in pem_paths(value, f"{path}[{index}]")]
    return []


def _parent(urn: str) -> str | None:
    """The parent URN, or None when the parent is the root stack."""
    if not urn or urn.split("::")[2].split("$")[-1] == "pulumi:pulumi:Stack":
        return None
    return urn


def _plain(value: Any) -> Any:
    """Deserialized RPC values -> JSON data; secrets keep Pulumi's secret signature."""
    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            return {rpc._special_sig_key: rpc._special_secret_sig, "value": "[secret]"}
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)  # protobuf numbers are doubles; keep integers integers
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


@dataclass
class SynthResult:
    inventory: Inventory
    outputs: dict[str, Any]  # unmasked, for resolving StackReferences of later stacks
    config: stack_config.StackConfig
    private_keys_in_state: list[str]  # "URN path" / "output name" of PEM private key text, secrets unmasked


def synthesize(stack: str, stacks_dir: Path, references: dict[str, dict[str, Any]] | None = None,
               extra: Callable[[], None] | None = None) -> SynthResult:
    """Run the program for `stack` offline; `references` maps StackReference names to outputs.

    `extra`, if given, runs after the program inside the same deployment: a way to try
    additional resources (an integrator's, or a deliberately broken one in tests).
    """
    path = stack_file(stacks_dir, stack)
    raw = stack_config.read_stack_file(path)
    source = _display(path)
    cfg = stack_config.validate(raw, source)

    def build() -> None:
        program.build(cfg, source, path.parent.parent)
        if extra is not None:
            extra()

    planned = run_under_mocks(stack, build, raw, references or {}, cfg.region)
    attribute(planned.resources, fallback_region=f"on-premises-{cfg.edge.country}" if cfg.edge else None)
    inventory = Inventory(project=PROJECT, stack=stack, status="planned",
                          source=f"medplat synth of {path.name} under the Pulumi SDK mock runtime",
                          resources=planned.resources, outputs=_plain_outputs(planned.outputs), zone=cfg.zone)
    return SynthResult(inventory=inventory, outputs=_unwrap(planned.outputs), config=cfg,
                       private_keys_in_state=planned.private_keys)


@dataclass
class PlannedRun:
    resources: list[Resource]
    outputs: dict[str, tuple[Any, bool]]  # name -> (value, is_secret)
    private_keys: list[str]


def run_under_mocks(stack: str, build: Callable[[], None], raw_config: dict[str, Any],
                    references: dict[str, dict[str, Any]], region: str | None) -> PlannedRun:
    """Run `build` (a Pulumi program) under the mock runtime and record what it registers."""
    # A brand-new context: the SDK keeps its settings, root stack and config in ContextVars.
    return contextvars.Context().run(_run, stack, build, raw_config, references, region)


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _run(stack: str, build: Callable[[], None], raw: dict[str, Any],
         references: dict[str, dict[str, Any]], region: str | None) -> PlannedRun:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        mocks = PlannedMocks(references, region)
        monitor = RecordingMonitor(mocks)
        # The SDK tracks unfinished Outputs in a set that, unless replaced, is one object
        # shared by every context; a failed run's leftovers would make the next run wait
        # forever. Give this run its own.
        settings = pulumi.runtime.settings.SETTINGS
        settings.outputs = set()
        settings.lock = threading.Lock()
        pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
        flat = {k: (SECRET_PLACEHOLDER if isinstance(v, stack_config.SecretValue) else v) for k, v in raw.items()}
        secret_keys = [k for k, v in raw.items() if isinstance(v, stack_config.SecretValue)]
        pulumi.runtime.set_all_config({k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in flat.items()},
                                      secret_keys)
        try:
            build()
            loop.run_until_complete(pulumi.runtime.stack.wait_for_rpcs())
            outputs = loop.run_until_complete(_stack_outputs())
        except (pulumi.RunError, ValueError) as exc:
            # Components raise ValueError for a stack whose choices cannot be built; the SDK
            # wraps errors raised inside apply(), so report the innermost one.
            root: BaseException = exc
            seen = {id(exc)}
            while root.__cause__ is not None and id(root.__cause__) not in seen:  # the SDK can chain a cycle
                root = root.__cause__
                seen.add(id(root))
            message = str(root).strip().splitlines()[-1].removeprefix("ValueError has risen: ")
            raise SynthError(f"{stack}: {message}") from None
        resources = list(monitor.records.values())
        for resource in resources:
            resource.outputs = monitor.component_outputs.get(resource.urn, {}) if not resource.custom else {}
        private_keys = monitor.private_keys + [f"output {name} {path}" for name, (value, _secret) in outputs.items()
                                               for path in pem_paths(value)]
        return PlannedRun(resources=resources, outputs=outputs, private_keys=private_keys)
    except BaseException:
        _cancel_in_flight(loop)
        raise
    finally:
        loop.close()
        asyncio.set_event_loop(None)


def _cancel_in_flight(loop: asyncio.AbstractEventLoop) -> None:
    """A failed program leaves Outputs waiting for resources that will never resolve."""
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


async def _stack_outputs() -> dict[str, tuple[Any, bool]]:
    root = pulumi.runtime.settings.get_root_resource()
    resolved: dict[str, tuple[Any, bool]] = {}
    for name, value in sorted(getattr(root, "outputs", {}).items()):
        output = pulumi.Output.from_input(value)
        resolved[name] = (await output.future(with_unknowns=False), await output.is_secret())
    return resolved


def _plain_outputs(outputs: dict[str, tuple[Any, bool]]) -> dict[str, Any]:
    return {name: ("[secret]" if secret else _plain(value)) for name, (value, secret) in outputs.items()}


def _unwrap(outputs: dict[str, tuple[Any, bool]]) -> dict[str, Any]:
    return {name: value for name, (value, _secret) in outputs.items()}
