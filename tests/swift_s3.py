"""The S3-protocol server for tests: Swift's s3api of the one shared OpenStack fixture
(tests/openstack_services.py: Keystone auth, s3token with EC2 credentials, encryption
middleware so `x-amz-server-side-encryption: AES256` is accepted). There is no second Swift:
prefer the conftest fixture `swift_s3`; these functions stay for tests written against the
former stand-alone (tempauth) Swift and return the same shared server."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from openstack_services import SwiftS3, shared_openstack

__all__ = ["SwiftS3", "start_swift_s3", "stop", "wait_until_ready"]


def start_swift_s3() -> tuple[SwiftS3, list[subprocess.Popen]]:
    """The shared OpenStack's S3 endpoint (started on first use) and no processes of its own."""
    return shared_openstack().s3(), []


def stop(processes: list[subprocess.Popen], folder: Path) -> None:
    """Nothing to stop: the shared OpenStack stops at the end of the session."""


def wait_until_ready(s3: SwiftS3, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    client = s3.client()
    while True:
        try:
            client.list_buckets()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
