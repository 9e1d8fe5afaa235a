"""Benchmark: FHIR de-identification throughput, one core (one thread).

Prints resources/s for device Observations (PoCD-shaped SpO2, the shape the adapters send)
through medplat.deid with medplat's research configuration, with Microsoft's HIPAA Safe
Harbor configuration (tests/data/ms-fhir-anonymizer, unchanged), through the telemetry
pipeline (with 60 s down-sampling), and next to them the previous research export's
transformation (replace subject by a pseudonym identifier, drop id and text — nothing else),
measured in the same run; plus the research export as it now answers (one collection Bundle)
and stored Bundles (entries relinked, no replayed plans). Goal (issue 16): >= 5,000 Observations/s per core.
Run on demand:
    python benchmarks/deid.py [--count 5000]
"""
from __future__ import annotations

import argparse
import os
import datetime
import tempfile
import time
from pathlib import Path

from medplat.deid import Deidentifier, KeyDomain, builtin, load_config
from medplat.deid.telemetry import TelemetryPolicy, deidentify_series
from medplat.service.db import make_engine
from medplat.workloads.ingest.export import collection
from medplat.workloads.pseudonymizer.keys import LocalKeyFile
from medplat.workloads.pseudonymizer.service import Pseudonymizer, metadata

GOAL = 5_000
SAFE_HARBOR = Path(__file__).resolve().parents[1] / "tests" / "data" / "ms-fhir-anonymizer" / "configuration-sample.json"
T0 = datetime.datetime(2026, 3, 14, 9, 0, tzinfo=datetime.timezone.utc)


def observation(i: int) -> dict:
    return {"resourceType": "Observation", "id": f"obs-{i}", "status": "final",
            "identifier": [{"system": "urn:example:monitor", "value": f"SN4711-{i}"}],
            "code": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "150456",
                                 "display": "MDC_PULS_OXIM_SAT_O2"}]},
            "subject": {"reference": f"Patient/p{i % 200}"}, "device": {"reference": f"Device/monitor-{i % 50}"},
            "effectiveDateTime": (T0 + datetime.timedelta(seconds=i)).isoformat(),
            "valueQuantity": {"value": 90 + i % 10, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}


def bundle(resources: list[dict]) -> dict:
    """A collection Bundle of stored resources with RESTful fullUrls (the slow, unplanned path)."""
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": f"https://fhir.example.org/fhir/Observation/{r['id']}", "resource": r}
                      for r in resources]}


def previous_export(resources: list[dict], pseudonyms: dict[str, str], domain: str) -> list[dict]:
    """What the research export did before issue 16 (workloads/ingest/export.py at 22173af)."""
    out = []
    for resource in resources:
        patient = resource["subject"]["reference"]
        copy = {k: v for k, v in resource.items() if k not in ("subject", "patient", "id", "text")}
        copy["subject"] = {"identifier": {"system": f"urn:medplat:pseudonym:{domain}", "value": pseudonyms[patient]}}
        out.append(copy)
    return out


def rate(label: str, count: int, work) -> float:
    """Resources per CPU second of this process (per core: the machine may be shared), and per
    wall-clock second beside it."""
    work(min(count, 200))  # warm caches (type tables, pseudonyms, plans)
    wall, cpu = time.perf_counter(), time.process_time()
    work(count)
    per_cpu = count / (time.process_time() - cpu)
    print(f"  {label:<62} {per_cpu:>9,.0f} /CPU-s {count / (time.perf_counter() - wall):>9,.0f} /s wall")
    return per_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    args = parser.parse_args()
    data = [observation(i) for i in range(args.count)]
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{tmp}/p.sqlite")
        metadata.create_all(engine)
        store = Pseudonymizer(engine, {"local": LocalKeyFile(Path(tmp) / "keys.json", "bench")})
        store.create_domain("study", "pseudonymized", "local")
        keys = KeyDomain(b"b" * 32, store.pseudonymize)
        research = Deidentifier(builtin("research"), keys, domain="study")
        safe_harbor = Deidentifier(load_config(SAFE_HARBOR), KeyDomain(b"b" * 32))
        pseudonyms = dict(zip([f"Patient/p{i}" for i in range(200)],
                              store.pseudonymize("study", [f"Patient/p{i}" for i in range(200)])))
        print(f"FHIR de-identification, {args.count:,} device Observations, one thread (goal >= {GOAL:,}/s per core), "
          f"load average {os.getloadavg()[0]:.1f}:")
        ours = rate("medplat.deid, research configuration", args.count,
                    lambda n: [research.deidentify(r) for r in data[:n]])
        rate("medplat.deid, Microsoft Safe Harbor configuration (193 rules)", args.count,
             lambda n: [safe_harbor.deidentify(r) for r in data[:n]])
        rate("medplat.deid.telemetry, research rules + 60 s down-sampling", args.count,
             lambda n: deidentify_series(data[:n], TelemetryPolicy("study", resample_seconds=60), keys))
        rate("research export now (de-id + one collection Bundle answer)", args.count,
             lambda n: collection([research.deidentify(r) for r in data[:n]], keys))
        rate("stored Bundles of 50, research config, references relinked", args.count,
             lambda n: [research.deidentify(bundle(data[i:i + 50])) for i in range(0, n, 50)])
        rate("previous research export (subject -> pseudonym only, no de-id)", args.count,
             lambda n: previous_export(data[:n], pseudonyms, "study"))
        print(f"goal {'met' if ours >= GOAL else 'NOT met'}: {ours:,.0f} vs {GOAL:,} Observations/s per core")


if __name__ == "__main__":
    main()
