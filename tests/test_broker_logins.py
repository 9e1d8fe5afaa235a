"""EdgeSite provisions the site broker's logins: one generated password per ACL user, mounted into
that workload's pod where the foundation's MQTT settings look, and the broker's password file.

The password file is checked by the real Mosquitto binary with the shipped mosquitto.conf and ACL:
every workload logs in with its generated password, anonymous clients, wrong passwords and one
workload's password under another's name are refused.
"""
from __future__ import annotations

import asyncio
import base64
import importlib
import re
import secrets
import string
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pulumi
import pytest

from conftest import REPO, of_type
from medplat.components.broker_logins import (BrokerLogins, BrokerLoginsArgs, acl_users, login_secret_name,
                                              password_file_line)
from medplat.components.labels import Labels
from medplat.workloads import app_module, catalog, runnable
from services import Mosquitto

ACL = (REPO / "workloads" / "mqtt-broker" / "acl").read_text()
SECRET = "kubernetes:core/v1:Secret"
SECRET_SIG = ("4dabf18193072939515e22adb298388d", "1b47061264138c4ac30d75fd1eb44270")  # Pulumi's secret marker


def revealed(secret_object: dict) -> dict:
    """stringData as the engine receives it: wrapped as a secret (so state encrypts it), then opened."""
    wrapped = secret_object["stringData"]
    assert wrapped.get(SECRET_SIG[0]) == SECRET_SIG[1], "stringData reaches the engine in clear text"
    return wrapped["value"]


def test_the_acl_names_one_user_per_workload():
    users = acl_users(ACL)
    assert users == ["sdc-bridge", "hl7-retrofit", "dicom-anonymizer", "edge-forwarder", "portal", "clinical-workflow"]
    assert set(users) <= set(catalog())


def test_password_lines_are_what_mosquitto_passwd_writes(tmp_path):
    # Same password and salt as a line written by the real mosquitto_passwd: same hash.
    import shutil
    import subprocess

    path = tmp_path / "passwords"
    subprocess.run([shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-c", "-b", str(path),
                    "edge-forwarder", "correct horse"], check=True, capture_output=True)
    written = path.read_text().strip()
    _, _, iterations, salt, _ = written.split(":", 1)[1].split("$")
    assert password_file_line("edge-forwarder", "correct horse", base64.b64decode(salt), int(iterations)) == written


class ProviderLikeMocks(pulumi.runtime.Mocks):
    """Random resources get fresh values as the pulumi-random provider generates them; Kubernetes
    objects echo their inputs, which are kept to run the broker with."""

    def __init__(self) -> None:
        self.objects: dict[str, dict] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        state = dict(args.inputs)
        if args.typ == "random:index/randomPassword:RandomPassword":
            alphabet = string.ascii_letters + string.digits  # special=False
            state["result"] = "".join(secrets.choice(alphabet) for _ in range(int(state["length"])))
        elif args.typ == "random:index/randomBytes:RandomBytes":
            raw = secrets.token_bytes(int(state["length"]))
            state |= {"base64": base64.b64encode(raw).decode(), "hex": raw.hex()}
        elif args.typ == SECRET:
            self.objects[state["metadata"]["name"]] = state
        return f"{args.name}-id", state

    def call(self, args):
        return {}


@pytest.fixture(scope="module")
def generated():
    """BrokerLogins for every ACL user, run under the mock runtime; the Secrets as created."""
    mocks = ProviderLikeMocks()
    asyncio.set_event_loop(asyncio.new_event_loop())  # an earlier test may have closed the thread's loop
    pulumi.runtime.set_mocks(mocks, project="medplat", stack="broker-logins", preview=False)
    secret_flags: dict[str, bool] = {}

    @pulumi.runtime.test
    def program():
        logins = BrokerLogins("site-broker-logins", BrokerLoginsArgs(namespace="medplat-test", users=acl_users(ACL)),
                              labels=Labels(zone="edge", site="test", data_class="operational", owner="test"))
        checked = {"mqtt-broker-passwords": logins.passwords,
                   **{login_secret_name(user): secret for user, secret in logins.logins.items()}}

        async def record():
            for name, secret in checked.items():
                secret_flags[name] = await secret.string_data.is_secret()
        return pulumi.Output.from_input(asyncio.ensure_future(record()))

    program()
    return mocks.objects, secret_flags


def test_generated_secrets_are_secret_and_distinct(generated):
    objects, flags = generated
    assert len(flags) == len(acl_users(ACL)) + 1 and all(flags.values()), flags
    passwords = {user: revealed(objects[login_secret_name(user)])["password"] for user in acl_users(ACL)}
    assert len(set(passwords.values())) == len(passwords) and all(len(p) == 32 for p in passwords.values())
    file = revealed(objects["mqtt-broker-passwords"])["passwords"]
    assert not any(password in file for password in passwords.values())  # only hashes
    assert [line.split(":", 1)[0] for line in file.splitlines()] == acl_users(ACL)


class GeneratedLoginsBroker(Mosquitto):
    """The real broker with the shipped config and ACL, but the password file EdgeSite generated."""

    def __init__(self, folder: Path, password_file: str) -> None:
        self.generated_file = password_file
        super().__init__(folder)

    def _passwords(self, folder: Path) -> Path:
        path = folder / "passwords"
        path.touch(mode=0o600)
        path.write_text(self.generated_file)
        return path


def connect(port: int, user: str | None, password: str | None) -> mqtt.ReasonCode | str:
    """CONNACK reason of one login attempt."""
    outcome: list = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"login-{uuid.uuid4().hex[:8]}")
    if user is not None:
        client.username_pw_set(user, password)
    client.on_connect = lambda _c, _u, _f, reason, _p: outcome.append(reason)
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + 5
    while not outcome and time.monotonic() < deadline:
        time.sleep(0.02)
    client.loop_stop()
    client.disconnect()
    return outcome[0] if outcome else "no CONNACK"


def test_the_real_broker_admits_each_workload_with_its_generated_password_and_nobody_else(generated, tmp_path):
    objects, _ = generated
    broker = GeneratedLoginsBroker(tmp_path / "broker", revealed(objects["mqtt-broker-passwords"])["passwords"])
    try:
        passwords = {user: revealed(objects[login_secret_name(user)])["password"] for user in acl_users(ACL)}
        for user, password in passwords.items():
            assert connect(broker.port, user, password) == "Success", user
        refused = [connect(broker.port, None, None),
                   connect(broker.port, "edge-forwarder", passwords["edge-forwarder"][:-1] + "?"),
                   connect(broker.port, "edge-forwarder", passwords["sdc-bridge"]),
                   connect(broker.port, "intruder", passwords["sdc-bridge"])]
        assert all(reason != "Success" and reason != "no CONNACK" and reason.is_failure for reason in refused), refused
    finally:
        broker.stop()


def test_edge_sites_mount_each_workload_login_where_its_settings_look(inventories):
    for stack in ("edge-dresden", "edge-leipzig"):
        inv = inventories[stack]
        secrets_by_name = {s["inputs"]["metadata"]["name"]: s for s in of_type(inv, SECRET)}
        # No credential in clear text: the engine keeps them as secrets (masked offline).
        assert secrets_by_name["mqtt-broker-passwords"]["inputs"]["stringData"] == "[secret]"
        pods = [(r["inputs"]["metadata"]["annotations"]["medplat.io/workload"], r["inputs"]["spec"]["template"]["spec"])
                for r in inv["resources"] if r["type"] in ("kubernetes:apps/v1:Deployment", "kubernetes:batch/v1:Job")
                and "medplat.io/workload" in (r["inputs"]["metadata"].get("annotations") or {})]
        deployed = {workload for workload, _ in pods}
        broker_template = next(r["inputs"]["spec"]["template"] for r in inv["resources"]
                               if r["type"] == "kubernetes:apps/v1:Deployment" and r["name"].endswith("mqtt-broker-deployment"))
        users = [u for u in acl_users(ACL) if u in deployed]
        assert "edge-forwarder" in users and "sdc-bridge" in users
        for workload, pod in pods:
            (container,) = pod["containers"]
            env = {e["name"]: e["value"] for e in container["env"]}
            if workload == "mqtt-broker":
                volume = next(v for v in pod["volumes"] if v["name"] == "mqtt-broker-passwords")
                assert volume["secret"]["secretName"] == "mqtt-broker-passwords"
                # A changed password file rolls the broker (it reads the file only at start).
                assert re.fullmatch(r"[0-9a-f]{64}", broker_template["metadata"]["annotations"][
                    "medplat.io/broker-passwords-sha256"])
                continue
            if workload not in users:
                assert not any(v["name"] == "broker-login" for v in pod["volumes"])
                continue
            assert secrets_by_name[login_secret_name(workload)]["inputs"]["stringData"] == "[secret]"
            volume = next(v for v in pod["volumes"] if v["name"] == "broker-login")
            assert volume["secret"]["secretName"] == login_secret_name(workload)
            mount = next(m for m in container["volumeMounts"] if m["name"] == "broker-login")
            assert mount["readOnly"] is True
            # The foundation's own settings class reads what the pod is given.
            if workload in runnable():
                settings_class = importlib.import_module(app_module(workload)).Settings
                prefix = catalog()[workload].env_prefix
                broker_env = {k[len(prefix):].lower(): v for k, v in env.items()
                              if k.startswith(prefix + "BROKER_")}
                settings = settings_class(**broker_env)
                assert str(settings.broker_password_file) == f"{mount['mountPath']}/password"
                url = getattr(settings, "broker_url", None)  # dicom-anonymizer logs in but publishes nothing
                assert url is None or url.startswith(f"mqtt://{workload}@"), url
