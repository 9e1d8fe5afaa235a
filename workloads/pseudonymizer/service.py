"""The pseudonymization library behind the API (and the key interface other workloads use)."""
from __future__ import annotations

import contextlib
import datetime
import math
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (Boolean, Column, DateTime, Engine, Integer, LargeBinary, MetaData, String, Table, func,
                        insert, select)
from sqlalchemy.exc import IntegrityError

from medplat.service.migrations import migrate
from medplat.workloads.pseudonymizer.keys import ALLOWED_CLASSES, KeyProvider, KeyProviderUnavailable, MissingKey
from medplat.workloads.pseudonymizer.pseudonyms import CROCKFORD, pseudonym, well_formed

metadata = MetaData()
domains = Table(
    "domains", metadata,
    Column("name", String(64), primary_key=True),
    Column("provider", String(32), nullable=False),
    Column("data_class", String(32), nullable=False),
    Column("alphabet", String(64), nullable=False),
    Column("length", Integer, nullable=False),
    Column("reversible", Boolean, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
)
domain_keys = Table(
    "domain_keys", metadata,
    Column("domain", String(64), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("hmac_ref", String(600), nullable=False),
    Column("mapping_ref", String(600)),
    Column("created", DateTime(timezone=True), nullable=False),
)
mappings = Table(
    "mappings", metadata,
    Column("domain", String(64), primary_key=True),
    Column("pseudonym", String(64), primary_key=True),
    Column("key_version", Integer, nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),  # nonce || AES-GCM(value), AAD = domain|pseudonym
)


def migrate_store(engine: Engine) -> str:
    """Bring a pseudonym store (the service's, or a local one such as the DICOM keystore's) to the
    newest revision in this folder's migrations."""
    return migrate(engine, "pseudonymizer", Path(__file__).parent / "migrations", metadata)


class PseudonymError(ValueError):
    def __init__(self, status: int, message: str, where: str | None = None) -> None:
        super().__init__(message)
        self.status, self.where = status, where


@contextlib.contextmanager
def keys_unavailable_as_503(provider: str):
    """A key service that is down or refuses us stops the operation before anything is written
    (the surrounding transaction rolls back); an unreadable key is a server-side fault."""
    try:
        yield
    except KeyProviderUnavailable as exc:
        raise PseudonymError(503, f"key provider {provider!r} unavailable, nothing was written: {exc}") from exc
    except MissingKey as exc:
        raise PseudonymError(500, f"key provider {provider!r} cannot return the domain key: {exc}") from exc


@dataclass(frozen=True)
class Domain:
    name: str
    provider: str
    data_class: str
    alphabet: str
    length: int
    reversible: bool


class Pseudonymizer:
    def __init__(self, engine: Engine, providers: dict[str, KeyProvider]) -> None:
        self.engine, self.providers = engine, providers
        self._keys: dict[tuple[str, int], tuple[bytes, bytes | None]] = {}

    def create_domain(self, name: str, data_class: str, provider: str, *, alphabet: str = CROCKFORD,
                      length: int = 16, reversible: bool = False) -> Domain:
        if data_class not in ALLOWED_CLASSES.get(provider, {data_class}):
            raise PseudonymError(422, f"{provider} may hold keys only for {sorted(ALLOWED_CLASSES.get(provider, ()))} domains, "
                                      f"not {data_class!r}: keys of PHI-linkable pseudonyms stay in the EU PHI zone",
                                 "dataClass")
        if provider not in self.providers:
            raise PseudonymError(422, f"key provider {provider!r} is not configured here "
                                      f"({', '.join(sorted(self.providers))})", "provider")
        if len(set(alphabet)) != len(alphabet) or len(alphabet) < 10:
            raise PseudonymError(422, "alphabet must have at least 10 distinct characters", "alphabet")
        if not 6 <= length <= int(256 / math.log2(len(alphabet))):
            raise PseudonymError(422, f"length must be 6..{int(256 / math.log2(len(alphabet)))} for this alphabet",
                                 "length")
        now = datetime.datetime.now(datetime.timezone.utc)
        try:
            with self.engine.begin() as connection, keys_unavailable_as_503(provider):
                connection.execute(insert(domains).values(name=name, provider=provider, data_class=data_class,
                                                          alphabet=alphabet, length=length, reversible=reversible,
                                                          created=now))
                self._add_key(connection, name, provider, 1, reversible, now)
        except IntegrityError:
            raise PseudonymError(409, f"domain {name!r} exists") from None
        return self.domain(name)

    def _add_key(self, connection, name: str, provider: str, version: int, reversible: bool, now) -> None:
        keys = self.providers[provider]
        connection.execute(insert(domain_keys).values(
            domain=name, version=version, hmac_ref=keys.create(f"{name}-v{version}-hmac"),
            mapping_ref=keys.create(f"{name}-v{version}-mapping") if reversible else None, created=now))

    def rotate(self, name: str) -> int:
        domain = self.domain(name)
        self._current_key_readable(domain)
        with self.engine.begin() as connection, keys_unavailable_as_503(domain.provider):
            version = connection.execute(select(func.max(domain_keys.c.version))
                                         .where(domain_keys.c.domain == name)).scalar_one() + 1
            self._add_key(connection, name, domain.provider, version, domain.reversible,
                          datetime.datetime.now(datetime.timezone.utc))
        return version

    def _current_key_readable(self, domain: Domain) -> None:
        """Rotation adds a key with this service's credentials: only a service that can read the
        domain's current key (same Barbican project, same key file) may add one, or a
        misconfigured instance would strand the domain's next key where its owner cannot read it."""
        try:
            self._key(domain)
        except PseudonymError as exc:
            if exc.status != 500:
                raise
            raise PseudonymError(409, f"rotation of {domain.name!r} refused, nothing was written: {exc}") from exc

    def domain(self, name: str) -> Domain:
        with self.engine.connect() as connection:
            row = connection.execute(select(domains).where(domains.c.name == name)).mappings().first()
        if row is None:
            raise PseudonymError(404, f"no domain {name!r}")
        return Domain(row["name"], row["provider"], row["data_class"], row["alphabet"], row["length"],
                      row["reversible"])

    def _key(self, domain: Domain, version: int | None = None) -> tuple[int, bytes, bytes | None]:
        with self.engine.connect() as connection:
            query = select(domain_keys).where(domain_keys.c.domain == domain.name)
            query = query.where(domain_keys.c.version == version) if version else \
                query.order_by(domain_keys.c.version.desc()).limit(1)
            row = connection.execute(query).mappings().first()
        cached = self._keys.get((domain.name, row["version"]))
        if cached is None:
            keys = self.providers[domain.provider]
            with keys_unavailable_as_503(domain.provider):
                cached = (keys.get(row["hmac_ref"]), keys.get(row["mapping_ref"]) if row["mapping_ref"] else None)
            self._keys[(domain.name, row["version"])] = cached
        return row["version"], cached[0], cached[1]

    def key(self, name: str) -> bytes:
        """The domain's current HMAC key: the key interface other workloads pseudonymize with."""
        return self._key(self.domain(name))[1]

    def pseudonymize(self, name: str, values: list[str]) -> list[str]:
        domain = self.domain(name)
        version, hmac_key, mapping_key = self._key(domain)
        results = [pseudonym(hmac_key, value, domain.alphabet, domain.length) for value in values]
        if domain.reversible:
            aes = AESGCM(mapping_key)
            rows = {}
            for value, result in zip(values, results):
                nonce = os.urandom(12)
                rows[result] = nonce + aes.encrypt(nonce, value.encode(), f"{name}|{result}".encode())
            with self.engine.begin() as connection:
                known = set(connection.execute(select(mappings.c.pseudonym).where(
                    mappings.c.domain == name, mappings.c.pseudonym.in_(list(rows)))).scalars())
                fresh = [{"domain": name, "pseudonym": p, "key_version": version, "ciphertext": c}
                         for p, c in rows.items() if p not in known]
                if fresh:
                    connection.execute(insert(mappings), fresh)
        return results

    def de_pseudonymize(self, name: str, candidates: list[str]) -> list[str]:
        domain = self.domain(name)
        if not domain.reversible:
            raise PseudonymError(409, f"domain {name!r} is one-way: it keeps no mapping")
        for index, candidate in enumerate(candidates):
            if not well_formed(candidate, domain.alphabet, domain.length):
                raise PseudonymError(422, f"pseudonyms[{index}]: {candidate!r} fails the check character "
                                          "(mistyped?)", f"pseudonyms[{index}]")
        with self.engine.connect() as connection:
            rows = {r.pseudonym: r for r in connection.execute(select(mappings).where(
                mappings.c.domain == name, mappings.c.pseudonym.in_(candidates)))}
        values = []
        for index, candidate in enumerate(candidates):
            row = rows.get(candidate)
            if row is None:
                raise PseudonymError(404, f"pseudonyms[{index}]: {candidate!r} is unknown in {name!r}",
                                     f"pseudonyms[{index}]")
            _, _, mapping_key = self._key(domain, row.key_version)
            blob = row.ciphertext
            values.append(AESGCM(mapping_key).decrypt(blob[:12], blob[12:], f"{name}|{candidate}".encode()).decode())
        return values
