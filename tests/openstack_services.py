"""Real OpenStack services on loopback for the tests: Keystone, Barbican and a one-replica Swift.

The services are Debian's packages (`keystone`, `barbican-api`, `swift-*`, installed by
`.ci/prepare`), run under the system python3 with Debian's libraries — never inside the venv —
from configuration written into a temporary folder, on free loopback ports:

- Keystone (uwsgi, a fresh database on the machine's PostgreSQL, fernet tokens): `keystone-manage bootstrap` makes the admin; this
  module then creates the `service` project with the `swift` and `barbican` service users, a
  `medplat` project with a deployer user (roles member + creator), its application credential
  and EC2 credentials, and registers the key-manager and object-store endpoints.
- Barbican (uwsgi, Debian's paste pipeline with keystonemiddleware's authtoken, simple crypto
  plugin with a generated KEK, SQLite, no queue: orders run inside the API process).
- Swift: account, container and object servers on a temporary device (rings with one replica)
  and a proxy with keystoneauth, s3api + s3token (EC2 credentials), object versioning and the
  encryption middleware (so S3 `x-amz-server-side-encryption: AES256` is accepted).

Public API (other tests build on it; keep the names): `start_openstack()`, `shared_openstack()`
(one instance per process, what the conftest fixtures `openstack` and `swift_s3` yield),
`OpenStack` (`.admin`, `.deployer`, `.other` Credentials; `.s3()` -> `SwiftS3`, boto3 through
s3api with the deployer's EC2 credentials; `.swift_account_url()`, `.stop_service()`,
`.restart_barbican()`), `Credentials`, `SwiftS3` (`.client()`, `.endpoint`, `.region`,
`.folder` whose `srv/` holds Swift's object files, for at-rest checks).

Run `python tests/openstack_services.py` to start everything by hand and print the credentials.
"""
from __future__ import annotations

import atexit
import base64
import getpass
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psycopg

SYSTEM_PYTHON = "/usr/bin/python3"
UWSGI = "/usr/bin/uwsgi_python3" if Path("/usr/bin/uwsgi_python3").exists() else "/usr/bin/uwsgi"
REGION = "RegionOne"
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_fernet_repository(path: Path) -> None:
    """What `keystone-manage fernet_setup` writes (key 0 staged, key 1 primary, each
    cryptography's Fernet.generate_key()), without three more python start-ups of keystone-manage."""
    from cryptography.fernet import Fernet

    path.mkdir(mode=0o700)
    for index in ("0", "1"):
        fd = os.open(path / index, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(Fernet.generate_key())


@dataclass
class Credentials:
    """One Keystone identity the tests and the README's deploy steps use."""
    auth_url: str
    user_id: str
    username: str
    password: str
    project_id: str
    project_name: str
    user_domain_id: str = "default"
    project_domain_id: str = "default"
    app_cred_id: str = ""
    app_cred_secret: str = ""
    ec2_access: str = ""
    ec2_secret: str = ""

    def password_auth(self) -> dict:
        return {"identity": {"methods": ["password"], "password": {"user": {
            "name": self.username, "domain": {"id": self.user_domain_id}, "password": self.password}}},
            "scope": {"project": {"id": self.project_id}}}

    def cli_env(self, *, application_credential: bool = False) -> dict[str, str]:
        """OS_* variables for the official clients (openstack, swift, barbican CLIs)."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("OS_")}
        env.update(OS_AUTH_URL=self.auth_url, OS_IDENTITY_API_VERSION="3", OS_REGION_NAME=REGION,
                   OS_INTERFACE="public")
        if application_credential:
            env.update(OS_AUTH_TYPE="v3applicationcredential", OS_APPLICATION_CREDENTIAL_ID=self.app_cred_id,
                       OS_APPLICATION_CREDENTIAL_SECRET=self.app_cred_secret)
        else:
            env.update(OS_AUTH_TYPE="password", OS_USERNAME=self.username, OS_PASSWORD=self.password,
                       OS_PROJECT_ID=self.project_id, OS_USER_DOMAIN_ID=self.user_domain_id,
                       OS_PROJECT_DOMAIN_ID=self.project_domain_id)
        return env


@dataclass
class SwiftS3:
    """The S3 protocol of the fixture's Swift (s3api, EC2 credentials of one project)."""
    endpoint: str
    access_key: str
    secret_key: str
    region: str
    folder: Path          # folder / "srv" holds the Swift device (encrypted object files)

    def client(self):
        from medplat.s3_feed import s3_client
        return s3_client(self.endpoint, self.region, self.access_key, self.secret_key)


@dataclass
class OpenStack:
    root: Path
    keystone_url: str = ""
    barbican_url: str = ""
    swift_url: str = ""          # proxy root; the account URL is swift_url + /v1/AUTH_<project>
    admin: Credentials | None = None
    deployer: Credentials | None = None      # medplat project: member + creator
    other: Credentials | None = None         # a second project, for refusal tests
    startup_seconds: dict[str, float] = field(default_factory=dict)
    keystone_template: str = ""   # the template database Keystone's schema was copied from, if any
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    databases: list[str] = field(default_factory=list)
    db_prefix: str = field(default_factory=lambda: f"medplat_os_{secrets.token_hex(4)}")

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> "OpenStack":
        """Keystone, Barbican and Swift set up in parallel (their setup is mostly python start-up
        of Debian's tools); identities are made once Keystone answers."""
        began = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        ports = {name: free_port() for name in ("keystone", "barbican", "proxy", "account", "container", "object")}
        self.keystone_url = f"http://127.0.0.1:{ports['keystone']}/v3"
        self.barbican_url = f"http://127.0.0.1:{ports['barbican']}"
        self.swift_url = f"http://127.0.0.1:{ports['proxy']}"
        self.service_passwords = {user: secrets.token_urlsafe(16) for user in ("swift", "barbican")}
        with ThreadPoolExecutor(3) as pool:
            jobs = [pool.submit(self._timed, "keystone", lambda: self._start_keystone(ports["keystone"])),
                    pool.submit(self._timed, "barbican", lambda: self._start_barbican(ports["barbican"])),
                    pool.submit(self._timed, "swift", lambda: self._start_swift(ports))]
            for job in jobs:
                job.result()
        self._timed("identities", self._create_identities)
        self._wait("barbican", f"{self.barbican_url}/")
        self._wait("swift", f"{self.swift_url}/healthcheck")
        self.startup_seconds["total"] = round(time.monotonic() - began, 2)
        return self

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()
        self._drop_databases()

    def stop_service(self, name: str) -> None:
        process = self.processes[name]
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)

    def restart_barbican(self) -> None:
        self._spawn_barbican()
        self._wait("barbican", f"{self.barbican_url}/")

    def _database(self, service: str, template: str | None = None) -> str:
        """A uniquely named database on the machine's PostgreSQL (SQLite locks under Keystone),
        optionally a copy of a template database."""
        name = f"{self.db_prefix}_{service}"
        if name not in self.databases:
            with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as connection:
                connection.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
            self.databases.append(name)
        return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"

    def _keystone_database(self, manage: list[str], conf: Path) -> None:
        """Keystone's schema from a template database kept on the machine's PostgreSQL, one per
        installed keystone package version (named after it), made by the first session's
        `keystone-manage db_sync`: later sessions copy it instead of running the migrations
        (the longest step of the start-up). The template holds the schema only, no identities."""
        version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "keystone"], capture_output=True,
                                 text=True).stdout.strip()
        template = f"medplat_os_tpl_keystone_{hashlib.sha256(version.encode()).hexdigest()[:12]}"
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as connection:
            exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (template,)).fetchone()
        if exists and version:
            try:
                url = self._database("keystone", template)
            except psycopg.Error:     # a template being renamed into place or dropped: migrate instead
                exists = None
            else:
                self._configure_keystone_database(conf, url)
                self.keystone_template = template
                return
        self._configure_keystone_database(conf, self._database("keystone"))
        self._timed("keystone-manage db_sync", lambda: self._run([*manage, "db_sync"]))
        if version:
            self._save_template(f"{self.db_prefix}_keystone", template)

    @staticmethod
    def _configure_keystone_database(conf: Path, url: str) -> None:
        conf.write_text(conf.read_text().replace("connection = KEYSTONE_DATABASE", f"connection = {url}"))

    @staticmethod
    def _save_template(source: str, template: str) -> None:
        """Copy under a temporary name, then rename: a concurrent session sees a whole template or none."""
        partial = f"{template}_{secrets.token_hex(3)}"
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as connection:
            try:
                connection.execute(f'CREATE DATABASE "{partial}" TEMPLATE "{source}"')
                connection.execute(f'ALTER DATABASE "{partial}" RENAME TO "{template}"')
            except psycopg.Error:
                connection.execute(f'DROP DATABASE IF EXISTS "{partial}"')

    def _drop_databases(self) -> None:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as connection:
            for name in self.databases:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.databases.clear()

    def _timed(self, name: str, step) -> None:
        began = time.monotonic()
        step()
        self.startup_seconds[name] = round(time.monotonic() - began, 2)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.root / "logs" / f"{name}.log", "ab")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                   env={**os.environ, **(env or {})}, start_new_session=True)
        self.processes[name] = process
        return process

    def _run(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        result = subprocess.run(argv, capture_output=True, text=True, cwd=self.root,
                                env={**os.environ, **(env or {})})
        if result.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr[-2000:]}")

    def _wait(self, name: str, url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = self.processes[name]
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited ({process.returncode}): {self.log_tail(name)}")
            try:
                if httpx.get(url, timeout=2).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{name} not ready at {url} after {timeout}s: {self.log_tail(name)}")

    def log_tail(self, name: str, size: int = 3000) -> str:
        path = self.root / "logs" / f"{name}.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""

    def _uwsgi(self, name: str, port: int, app_args: list[str], env: dict[str, str], threads: int = 4) -> None:
        self._spawn(name, [UWSGI, "--plugin", "python3", "--http-socket", f"127.0.0.1:{port}", "--master",
                           "--processes", "1", "--threads", str(threads), "--enable-threads", "--lazy-apps",
                           "--die-on-term", "--need-app", "--buffer-size", "65535",
                           "--add-header", "Connection: close", "--chdir", str(self.root),
                           *app_args], env)

    # --- Keystone --------------------------------------------------------------------------

    def _start_keystone(self, port: int) -> None:
        home = self.root / "keystone"
        home.mkdir()
        conf = home / "keystone.conf"
        conf.write_text(f"""[DEFAULT]
use_stderr = true
[database]
connection = KEYSTONE_DATABASE
[token]
provider = fernet
expiration = 3600
[fernet_tokens]
key_repository = {home}/fernet-keys
[fernet_receipts]
key_repository = {home}/fernet-receipts
[credential]
key_repository = {home}/credential-keys
[identity]
password_hash_rounds = 4
[oslo_policy]
enforce_new_defaults = false
""")
        manage = [SYSTEM_PYTHON, "/usr/bin/keystone-manage", "--config-file", str(conf)]
        for repository in ("fernet-keys", "fernet-receipts", "credential-keys"):
            make_fernet_repository(home / repository)
        self._timed("keystone database", lambda: self._keystone_database(manage, conf))
        admin_password = secrets.token_urlsafe(16)
        # The password by environment: a token_urlsafe value may start with "-" (read as an
        # option), and the process list stays free of it.
        # uwsgi loads Keystone while bootstrap runs (both are mostly python start-up); nothing
        # authenticates before both are done.
        self._uwsgi("keystone", port, ["--wsgi-file", "/usr/bin/keystone-wsgi-public"],
                    {"OS_KEYSTONE_CONFIG_FILES": str(conf)})
        self._timed("keystone-manage bootstrap", lambda: self._run([*manage, "bootstrap",
                   "--bootstrap-admin-url", self.keystone_url, "--bootstrap-public-url", self.keystone_url,
                   "--bootstrap-internal-url", self.keystone_url, "--bootstrap-region-id", REGION],
            {"OS_BOOTSTRAP_PASSWORD": admin_password}))
        self._timed("keystone uwsgi ready", lambda: self._wait("keystone", self.keystone_url))
        token, body = self.token_for({"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"id": "default"}, "password": admin_password}}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}})
        self.admin = Credentials(self.keystone_url, body["token"]["user"]["id"], "admin", admin_password,
                                 body["token"]["project"]["id"], "admin")
        self._admin_token = token

    def token_for(self, auth: dict) -> tuple[str, dict]:
        response = httpx.post(f"{self.keystone_url}/auth/tokens", json={"auth": auth}, timeout=30)
        response.raise_for_status()
        return response.headers["X-Subject-Token"], response.json()

    def keystone(self, method: str, path: str, **kwargs) -> dict:
        response = httpx.request(method, f"{self.keystone_url}{path}", timeout=30,
                                 headers={"X-Auth-Token": self._admin_token}, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else {}

    def _create_identities(self) -> None:
        roles = {role["name"]: role["id"] for role in self.keystone("GET", "/roles")["roles"]}
        for name in ("creator", "service"):
            if name not in roles:
                roles[name] = self.keystone("POST", "/roles", json={"role": {"name": name}})["role"]["id"]
        service_project = self._project("service")
        for user, password in self.service_passwords.items():
            user_id = self._user(user, password, service_project)
            for role in ("admin", "service"):
                self.keystone("PUT", f"/projects/{service_project}/users/{user_id}/roles/{roles[role]}")
        # Independent of each other: in parallel on Keystone's four uwsgi threads.
        with ThreadPoolExecutor(4) as pool:
            jobs = [pool.submit(self._endpoint, "barbican", "key-manager", self.barbican_url),
                    pool.submit(self._endpoint, "swift", "object-store", f"{self.swift_url}/v1/AUTH_%(project_id)s"),
                    pool.submit(self._project_user, "medplat", "medplat-deployer", roles, ("member", "creator")),
                    pool.submit(self._project_user, "other-tenant", "other-deployer", roles, ("member", "creator"))]
            self.deployer, self.other = jobs[2].result(), jobs[3].result()
            for job in jobs[:2]:
                job.result()

    def _project(self, name: str) -> str:
        return self.keystone("POST", "/projects", json={"project": {"name": name, "domain_id": "default"}})[
            "project"]["id"]

    def _user(self, name: str, password: str, project_id: str) -> str:
        return self.keystone("POST", "/users", json={"user": {
            "name": name, "password": password, "domain_id": "default", "default_project_id": project_id}})[
            "user"]["id"]

    def _endpoint(self, name: str, type_: str, url: str) -> None:
        service = self.keystone("POST", "/services", json={"service": {"name": name, "type": type_}})["service"]
        for interface in ("public", "internal", "admin"):
            self.keystone("POST", "/endpoints", json={"endpoint": {
                "service_id": service["id"], "interface": interface, "url": url, "region_id": REGION}})

    def _project_user(self, project: str, username: str, roles: dict, granted: tuple[str, ...]) -> Credentials:
        """A project with one user, its application credential and EC2 credentials (as the README's
        deploy steps make them)."""
        password = secrets.token_urlsafe(16)
        project_id = self._project(project)
        user_id = self._user(username, password, project_id)
        for role in granted:
            self.keystone("PUT", f"/projects/{project_id}/users/{user_id}/roles/{roles[role]}")
        credentials = Credentials(self.keystone_url, user_id, username, password, project_id, project)
        user_token, _ = self.token_for(credentials.password_auth())
        headers = {"X-Auth-Token": user_token}
        app_cred = httpx.post(f"{self.keystone_url}/users/{user_id}/application_credentials", headers=headers,
                              json={"application_credential": {
                                  # bcrypt, which Keystone hashes the secret with, reads 72 bytes:
                                  # a longer (default, 86-character) secret has an ignored tail.
                                  "name": f"{project}-deploy", "secret": secrets.token_urlsafe(48)}}, timeout=30)
        app_cred.raise_for_status()
        credentials.app_cred_id = app_cred.json()["application_credential"]["id"]
        credentials.app_cred_secret = app_cred.json()["application_credential"]["secret"]
        ec2 = httpx.post(f"{self.keystone_url}/users/{user_id}/credentials/OS-EC2", headers=headers,
                         json={"tenant_id": project_id}, timeout=30)
        ec2.raise_for_status()
        credentials.ec2_access = ec2.json()["credential"]["access"]
        credentials.ec2_secret = ec2.json()["credential"]["secret"]
        return credentials

    def _authtoken_section(self, user: str) -> str:
        return f"www_authenticate_uri = {self.keystone_url}\n" + self._service_auth(user)

    def _service_auth(self, user: str) -> str:
        """keystoneauth password options of a service user (service project, admin + service roles)."""
        return f"""auth_url = {self.keystone_url}
auth_type = password
project_domain_id = default
user_domain_id = default
project_name = service
username = {user}
password = {self.service_passwords[user]}
region_name = {REGION}
"""

    # --- Barbican --------------------------------------------------------------------------

    def _start_barbican(self, port: int) -> None:
        home = self.root / "barbican"
        (home / ".barbican").mkdir(parents=True)
        conf = home / ".barbican" / "barbican.conf"   # oslo.config finds ~/.barbican/barbican.conf first
        kek = base64.b64encode(os.urandom(32)).decode()
        conf.write_text(f"""[DEFAULT]
use_stderr = true
host_href = {self.barbican_url}
sql_connection = sqlite:///{home}/barbican.db
db_auto_create = false
[queue]
enable = false
[secretstore]
enabled_secretstore_plugins = store_crypto
[crypto]
enabled_crypto_plugins = simple_crypto
[simple_crypto_plugin]
kek = {kek}
[oslo_policy]
enforce_new_defaults = false
[keystone_authtoken]
# No token cache: a revoked token is refused at once (the key provider's re-authentication test).
token_cache_time = -1
{self._authtoken_section("barbican")}""")
        paste = home / "barbican-api-paste.ini"
        paste.write_text(Path("/etc/barbican/barbican-api-paste.ini").read_text().replace(
            "paste.filter_factory = keystonemiddleware.auth_token:filter_factory",
            "paste.filter_factory = keystonemiddleware.auth_token:filter_factory\n"
            f"oslo_config_project = barbican\noslo_config_file = {conf}"))
        self._run([SYSTEM_PYTHON, "/usr/bin/barbican-manage", "db", "upgrade", "--db-url",
                   f"sqlite:///{home}/barbican.db"], {"HOME": str(home)})
        self._barbican_argv = (port, paste, home)
        self._spawn_barbican()

    def _spawn_barbican(self) -> None:
        """Barbican keeps SQLite: on PostgreSQL, Debian's Barbican 15 stores simple-crypto cypher
        text as bytea-cast text and then fails every payload read ("Invalid base64-encoded
        string"). One thread, so SQLite's single writer never waits on itself."""
        port, paste, home = self._barbican_argv
        self._uwsgi("barbican", port, ["--paste", f"config:{paste}", "--no-default-app"], {"HOME": str(home)},
                    threads=1)

    # --- Swift -----------------------------------------------------------------------------

    def _start_swift(self, ports: dict[str, int]) -> None:
        etc, devices = self.root / "swift", self.root / "srv"
        (devices / "d1").mkdir(parents=True)
        etc.mkdir()
        (etc / "swift.conf").write_text(f"""[swift-hash]
swift_hash_path_suffix = {secrets.token_hex(8)}
swift_hash_path_prefix = {secrets.token_hex(8)}
[storage-policy:0]
name = Policy-0
default = yes
""")
        common = f"""[DEFAULT]
bind_ip = 127.0.0.1
workers = 0
user = {getpass.getuser()}
swift_dir = {etc}
devices = {devices}
mount_check = false
log_facility = LOG_LOCAL0
"""
        self._build_rings(etc, ports)
        for server in ("account", "container", "object"):
            conf = etc / f"{server}-server.conf"
            conf.write_text(common + f"bind_port = {ports[server]}\n[pipeline:main]\npipeline = {server}-server\n"
                            f"[app:{server}-server]\nuse = egg:swift#{server}\n")
            self._spawn(f"swift-{server}", [SYSTEM_PYTHON, f"/usr/bin/swift-{server}-server", str(conf), "--verbose"])
        root_secret = base64.b64encode(os.urandom(32)).decode()
        proxy = etc / "proxy-server.conf"
        proxy.write_text(common + f"""bind_port = {ports['proxy']}
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging listing_formats bulk authtoken s3api s3token keystoneauth copy slo dlo versioned_writes symlink keymaster encryption proxy-logging proxy-server
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:s3api]
use = egg:swift#s3api
location = {REGION}
[filter:s3token]
use = egg:swift#s3token
auth_uri = {self.keystone_url}
reseller_prefix = AUTH_
delay_auth_decision = False
# Keystone 22.0.2-0+deb12u6 refuses unauthenticated /v3/s3tokens calls: s3token authenticates
# as the swift service user.
{self._service_auth("swift")}
[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
delay_auth_decision = True
{self._authtoken_section("swift")}
[filter:keystoneauth]
use = egg:swift#keystoneauth
operator_roles = admin, member
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
[filter:versioned_writes]
use = egg:swift#versioned_writes
allow_versioned_writes = true
allow_object_versioning = true
[filter:symlink]
use = egg:swift#symlink
[filter:keymaster]
use = egg:swift#keymaster
encryption_root_secret = {root_secret}
[filter:encryption]
use = egg:swift#encryption
""")
        self._spawn("swift", [SYSTEM_PYTHON, "/usr/bin/swift-proxy-server", str(proxy), "--verbose"])
        for server in ("account", "container", "object"):
            self._wait(f"swift-{server}", f"http://127.0.0.1:{ports[server]}/healthcheck")

    def _build_rings(self, etc: Path, ports: dict[str, int]) -> None:
        """One-replica rings with one device each, built with Swift's own RingBuilder (one
        process instead of nine swift-ring-builder runs)."""
        script = (
            "import sys\nfrom swift.common.ring import RingBuilder\n"
            "etc = sys.argv[1]\n"
            "for server, port in zip(('account', 'container', 'object'), sys.argv[2:]):\n"
            "    builder = RingBuilder(6, 1, 1)\n"
            "    builder.add_dev({'region': 1, 'zone': 1, 'ip': '127.0.0.1', 'port': int(port), 'device': 'd1',"
            " 'weight': 100})\n"
            "    builder.rebalance()\n"
            "    builder.save(f'{etc}/{server}.builder')\n"
            "    builder.get_ring().save(f'{etc}/{server}.ring.gz')\n")
        self._run([SYSTEM_PYTHON, "-c", script, str(etc), *(str(ports[s]) for s in ("account", "container", "object"))])

    def swift_account_url(self, credentials: Credentials) -> str:
        return f"{self.swift_url}/v1/AUTH_{credentials.project_id}"

    def s3(self, credentials: Credentials | None = None) -> SwiftS3:
        credentials = credentials or self.deployer
        return SwiftS3(self.swift_url, credentials.ec2_access, credentials.ec2_secret, REGION, self.root)


def start_openstack(root: Path | None = None) -> OpenStack:
    cloud = OpenStack(root or Path(tempfile.mkdtemp(prefix="medplat-openstack-")))
    try:
        return cloud.start()
    except BaseException:
        cloud.stop()
        raise


_shared: OpenStack | None = None
_shared_lock = threading.Lock()


def shared_openstack() -> OpenStack:
    """One instance per process (a test session), started on first use, stopped at exit."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = start_openstack()
            print(f"\nOpenStack fixture startup seconds: {_shared.startup_seconds}", file=sys.stderr)
            atexit.register(stop_shared)
        return _shared


def stop_shared() -> None:
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.stop()
            shutil.rmtree(_shared.root, ignore_errors=True)
            _shared = None


if __name__ == "__main__":
    cloud = start_openstack()
    print(f"startup seconds: {cloud.startup_seconds}", file=sys.stderr)
    print(f"keystone {cloud.keystone_url}\nbarbican {cloud.barbican_url}\nswift {cloud.swift_url}\nroot {cloud.root}")
    for key, value in cloud.deployer.cli_env(application_credential=True).items():
        if key.startswith("OS_"):
            print(f"export {key}={value}")
    (cloud.root / "credentials.json").write_text(json.dumps(
        {"admin": asdict(cloud.admin), "deployer": asdict(cloud.deployer), "other": asdict(cloud.other),
         "keystone": cloud.keystone_url, "barbican": cloud.barbican_url, "swift": cloud.swift_url}, indent=1))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    finally:
        cloud.stop()
        shutil.rmtree(cloud.root, ignore_errors=True)
