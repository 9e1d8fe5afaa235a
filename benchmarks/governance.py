"""Benchmark: consent decisions and pseudonyms (2 cores).

Prints consent decisions/s and latency percentiles in-process (the compiled engine, a
patient with 20 consents with nested provisions) and over HTTP (FastAPI + JWT verification +
audit record, loopback), and pseudonyms/s (HMAC-SHA256 + check character) one-way and with
the encrypted reversible mapping. Goal (issue 8): p99 < 1 ms in-process for 20 consents.
Run on demand:
    python benchmarks/governance.py
"""
from __future__ import annotations

import datetime
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from medplat.service.auth import mint_local_token
from medplat.workloads.consent.app import Settings as ConsentSettings
from medplat.workloads.consent.app import build as build_consent
from medplat.workloads.consent.engine import CompiledConsent, Request, decide
from medplat.workloads.pseudonymizer.pseudonyms import CROCKFORD, pseudonym
from medplat.workloads.pseudonymizer.service import Pseudonymizer, metadata
from medplat.workloads.pseudonymizer.keys import LocalKeyFile
from medplat.service.db import make_engine

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
GOAL_P99_MS = 1.0


def consents(patient: str, count: int = 20) -> list[dict]:
    found = []
    for i in range(count):
        found.append({"resourceType": "Consent", "id": f"c{i}", "status": "active" if i % 5 else "inactive",
                      "scope": {"coding": [{"code": "patient-privacy"}]}, "category": [{"coding": [{"code": "59284-0"}]}],
                      "patient": {"reference": patient},
                      "provision": {"type": "permit" if i % 2 else "deny",
                                    "period": {"start": "2020-01-01", "end": "2030-12-31"},
                                    "purpose": [{"system": ACT, "code": ["TREAT", "HRESCH", "HMARKT"][i % 3]}],
                                    "provision": [{"type": "deny", "actor": [{"role": {"coding": [{"code": "PRCP"}]}, "reference": {"reference": f"Practitioner/x{i}"}}],
                                                   "provision": [{"type": "permit", "data": [
                                                       {"meaning": "instance", "reference": {"reference": f"Observation/o{i}"}}]}]},
                                                  {"type": "deny", "securityLabel": [{"code": "PSY"}]}]}})
    return found


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    return (statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.99)] * 1000, ordered[-1] * 1000)


def in_process(n: int = 50_000) -> tuple[float, tuple[float, float, float]]:
    compiled = [CompiledConsent.compile(c) for c in consents("Patient/p1")]
    request = Request(patient="Patient/p1", actors=frozenset({"Organization/uni"}), purpose="HRESCH", action="use",
                      resource_type="Observation", data=frozenset({"Observation/o7"}),
                      time=datetime.datetime(2026, 11, 1, tzinfo=datetime.timezone.utc))
    samples = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        decide(compiled, request, when_nothing_applies="deny", obligations=["pseudonymize"])
        samples.append(time.perf_counter() - t)
    return n / (time.perf_counter() - start), percentiles(samples)


def over_http(folder: Path, n: int = 2000) -> tuple[float, tuple[float, float, float]]:
    app, settings = build_consent(ConsentSettings(data_dir=folder / "consent", log_level="warning", port=18765))
    token = mint_local_token(settings.data_dir, "consent", ["consent.write", "consent.decide"], "bench")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=18765, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    client = httpx.Client(base_url="http://127.0.0.1:18765", headers={"authorization": f"Bearer {token}"})
    for resource in consents("Patient/p1"):
        client.post("/Consent", json=resource).raise_for_status()
    body = {"patient": "Patient/p1", "purpose": "HRESCH", "actors": ["Organization/uni"], "action": "use",
            "resourceType": "Observation", "data": ["Observation/o7"]}
    samples = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        client.post("/decide", json=body).raise_for_status()
        samples.append(time.perf_counter() - t)
    rate = n / (time.perf_counter() - start)
    server.should_exit = True
    app.state.audit.close()
    return rate, percentiles(samples)


def pseudonyms_per_second(folder: Path, n: int = 100_000) -> tuple[float, float]:
    key = b"k" * 32
    start = time.perf_counter()
    for i in range(n):
        pseudonym(key, f"PAT-{i:08d}", CROCKFORD, 16)
    one_way = n / (time.perf_counter() - start)
    engine = make_engine(f"sqlite:///{folder / 'pseudo.sqlite'}")
    metadata.create_all(engine)
    core = Pseudonymizer(engine, {"local": LocalKeyFile(folder / "keys.json", "bench")})
    core.create_domain("bench", "pseudonymized", "local", reversible=True)
    values = [f"PAT-{i:08d}" for i in range(n // 5)]
    start = time.perf_counter()
    for offset in range(0, len(values), 1000):
        core.pseudonymize("bench", values[offset:offset + 1000])
    return one_way, len(values) / (time.perf_counter() - start)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rate, (p50, p99, worst) = in_process()
        http_rate, (h50, h99, hworst) = over_http(Path(tmp))
        one_way, reversible = pseudonyms_per_second(Path(tmp))
    print("consent decisions, one patient with 20 consents (nested provisions)")
    print(f"  in-process   {rate:10,.0f} decisions/s   p50 {p50:.3f} ms  p99 {p99:.3f} ms  max {worst:.3f} ms   "
          f"goal p99 < {GOAL_P99_MS} ms")
    print(f"  over HTTP    {http_rate:10,.0f} decisions/s   p50 {h50:.2f} ms  p99 {h99:.2f} ms  max {hworst:.2f} ms "
          "(FastAPI, JWT, audit record; one client)")
    print(f"pseudonyms     {one_way:10,.0f}/s one-way (HMAC-SHA256 + check character)")
    print(f"               {reversible:10,.0f}/s with the AES-GCM reversible mapping (SQLite, batches of 1,000)")


if __name__ == "__main__":
    sys.exit(main())
