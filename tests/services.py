"""Real servers for the store-and-forward tests: Mosquitto with the project's broker config,
and medplat workloads as subprocesses (`medplat serve NAME`), each on a free loopback port."""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
BROKER_CONF = REPO / "workloads" / "mqtt-broker" / "mosquitto.conf"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 90, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


BROKER_ACL = REPO / "workloads" / "mqtt-broker" / "acl"
BROKER_USERS = ("edge-forwarder", "sdc-bridge", "hl7-retrofit", "dicom-anonymizer", "portal", "clinical-workflow")


class Mosquitto:
    """The real broker binary, run with workloads/mqtt-broker/mosquitto.conf and its ACL (port and
    paths local); each workload user gets a password made with the real mosquitto_passwd."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(binary):
            raise RuntimeError("mosquitto is not installed (.ci/prepare installs it)")
        self.folder, self.port = folder, free_port()
        (folder / "data").mkdir(parents=True, exist_ok=True)
        lines = []
        for line in BROKER_CONF.read_text().splitlines():
            key = line.split(" ", 1)[0]
            if key == "listener":
                line = f"listener {self.port} 127.0.0.1"
            elif key == "persistence_location":
                line = f"persistence_location {folder / 'data'}/"
            elif key == "log_dest":
                line = f"log_dest file {folder / 'mosquitto.log'}"
            elif key == "password_file":
                line = f"password_file {self._passwords(folder)}"
            elif key == "acl_file":
                line = f"acl_file {BROKER_ACL}"
            lines.append(line)
        lines.append(f"user {getpass.getuser()}")  # run as root, mosquitto would switch to 'mosquitto'
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen([binary, "-c", str(self.conf)])
        wait_for_port(self.port, process=self.process)
        self.anonymous_url = f"mqtt://127.0.0.1:{self.port}"

    def _passwords(self, folder: Path) -> Path:
        path = folder / "passwords"
        path.touch(mode=0o600)
        for user in BROKER_USERS:
            subprocess.run([shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-b", str(path), user,
                            f"pw-{user}"], check=True, capture_output=True)
        return path

    @staticmethod
    def login(client, user: str) -> None:
        """Log a paho client in as one of the workload users."""
        client.username_pw_set(user, f"pw-{user}")

    def url_for(self, user: str) -> str:
        """The broker URL a workload uses, logging in as itself."""
        return f"mqtt://{user}:pw-{user}@127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL: the broker gets no chance to save its in-memory state."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def restart(self) -> None:
        """The same config, port and persistence folder again."""
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen([binary, "-c", str(self.conf)])
        wait_for_port(self.port, process=self.process)


class Service:
    """`medplat serve NAME` in a subprocess with MEDPLAT_<NAME>_* settings; restartable."""

    def __init__(self, name: str, settings: dict[str, str], port: int, log: Path) -> None:
        prefix = "MEDPLAT_" + name.upper().replace("-", "_") + "_"
        self.name, self.port, self.log = name, port, log
        self.env = {**os.environ, **{prefix + k.upper(): str(v) for k, v in settings.items()},
                    prefix + "PORT": str(port), prefix + "LOG_LEVEL": "warning"}
        self.process: subprocess.Popen | None = None

    def start(self) -> Service:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "medplat", "serve", self.name], env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, process=self.process)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a power cut of the process."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


