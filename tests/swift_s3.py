"""A real OpenStack Swift (Debian's swift-proxy/-account/-container/-object 2.30) with its
s3api middleware on loopback: the S3-protocol server the analytics feed is tested against.
Swift's own at-rest encryption (keymaster + encryption middlewares) is on, which is what
s3api requires before it accepts `x-amz-server-side-encryption: AES256`."""
from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from services import free_port, wait_for_port

ACCESS_KEY, SECRET_KEY, REGION = "test:tester", "testing", "eu-central-1"


@dataclass
class SwiftS3:
    endpoint: str
    access_key: str
    secret_key: str
    region: str
    folder: Path

    def client(self):
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                          request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required"))


SERVER = """[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
devices = {folder}/srv
mount_check = false
swift_dir = {folder}
workers = 0
log_address = {folder}/no-syslog
log_level = WARNING

[pipeline:main]
pipeline = {kind}-server

[app:{kind}-server]
use = egg:swift#{kind}
"""

PROXY = """[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
swift_dir = {folder}
workers = 0
log_address = {folder}/no-syslog
log_level = WARNING

[pipeline:main]
pipeline = catch_errors proxy-logging cache s3api tempauth keymaster encryption proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcached}

[filter:s3api]
use = egg:swift#s3api
location = {region}

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = {secret} .admin

[filter:keymaster]
use = egg:swift#keymaster
encryption_root_secret = {root_secret}

[filter:encryption]
use = egg:swift#encryption
"""


RINGS = """
import sys
from swift.common.ring import RingBuilder
folder, ports = sys.argv[1], dict(zip(("account", "container", "object"), sys.argv[2:5]))
for kind, port in ports.items():
    builder = RingBuilder(6, 1, 1)
    builder.add_dev({"region": 1, "zone": 1, "ip": "127.0.0.1", "port": int(port), "device": "sdb1", "weight": 100})
    builder.rebalance()
    builder.save(f"{folder}/{kind}.builder")
    builder.get_ring().save(f"{folder}/{kind}.ring.gz")
"""


def start_swift_s3() -> tuple[SwiftS3, list[subprocess.Popen]]:
    folder = Path(tempfile.mkdtemp(prefix="medplat-swift-"))
    (folder / "srv" / "sdb1").mkdir(parents=True)
    (folder / "swift.conf").write_text(
        "[swift-hash]\nswift_hash_path_suffix = medplat-test-suffix\nswift_hash_path_prefix = medplat-test-prefix\n\n"
        "[storage-policy:0]\nname = gold\ndefault = yes\n")
    ports = {kind: free_port() for kind in ("account", "container", "object", "proxy", "memcached")}
    processes = [subprocess.Popen(["memcached", "-l", "127.0.0.1", "-p", str(ports["memcached"]), "-U", "0",
                                   "-u", "nobody" if os.geteuid() == 0 else os.environ.get("USER", "nobody")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    # The three one-device rings in one interpreter (swift-ring-builder is one slow start per command).
    subprocess.run(["/usr/bin/python3", "-c", RINGS, str(folder), str(ports["account"]), str(ports["container"]),
                    str(ports["object"])], check=True)
    for kind in ("account", "container", "object"):
        conf = folder / f"{kind}-server.conf"
        conf.write_text(SERVER.format(port=ports[kind], folder=folder, kind=kind))
        processes.append(subprocess.Popen([f"swift-{kind}-server", str(conf)], stdout=subprocess.DEVNULL,
                                          stderr=open(folder / f"{kind}.log", "wb")))
    proxy = folder / "proxy-server.conf"
    proxy.write_text(PROXY.format(port=ports["proxy"], folder=folder, memcached=ports["memcached"], region=REGION,
                                  secret=SECRET_KEY, root_secret=base64.b64encode(os.urandom(32)).decode()))
    processes.append(subprocess.Popen(["swift-proxy-server", str(proxy)], stdout=subprocess.DEVNULL,
                                      stderr=open(folder / "proxy.log", "wb")))
    for kind in ("memcached", "account", "container", "object", "proxy"):
        wait_for_port(ports[kind], timeout=60)
    return SwiftS3(f"http://127.0.0.1:{ports['proxy']}", ACCESS_KEY, SECRET_KEY, REGION, folder), processes


def stop(processes: list[subprocess.Popen], folder: Path) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
    shutil.rmtree(folder, ignore_errors=True)


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
