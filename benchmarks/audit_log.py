"""Benchmark: the audit log at scale (SQLite, one process, 2 cores).

Prints batched append rates (the log core: canonical bytes, leaf hashes, storage, signed
checkpoint per batch of 1,000; and the API path, which adds fhir.resources validation of
every AuditEvent), inclusion and consistency proof times at N entries, and the time to
export and verify all N entries offline (`medplat audit verify`).
Goal (issue 9): >= 20,000 appends/s batched; 1M-entry verification < 10 s. Run on demand:
    python benchmarks/audit_log.py [--entries 1000000]
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from medplat.service.audit import balp_event
from medplat.service.db import make_engine
from medplat.workloads.audit_log.log import AuditLog, canonical, search_fields
from medplat.workloads.audit_log.note import Signer
from medplat.workloads.audit_log.tree import metadata
from medplat.workloads.audit_log.verify import verify_lines

BATCH, GOAL_APPENDS, GOAL_VERIFY_S = 1000, 20_000, 10.0


def events(start: int, count: int) -> list[dict]:
    return [balp_event("read", source="ingest", agent=f"clinician-{i % 50}", patient=f"Patient/p{i % 5000}",
                       entities=[f"Observation/o{i}"], purpose="TREAT") for i in range(start, start + count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        engine = make_engine(f"sqlite:///{folder / 'audit.sqlite'}")
        metadata.create_all(engine)
        signer = Signer.generate("bench.medplat-audit")
        log = AuditLog(engine, "bench.medplat/audit", signer)

        sample = events(0, 20_000)
        start = time.perf_counter()
        for offset in range(0, len(sample), BATCH):
            log.append(sample[offset:offset + BATCH])  # API path: validates every AuditEvent
        api_rate = len(sample) / (time.perf_counter() - start)

        core_seconds, appended = 0.0, len(sample)
        while appended < args.entries:
            count = min(50 * BATCH, args.entries - appended)
            chunk = events(appended, count)
            start = time.perf_counter()
            for offset in range(0, count, BATCH):
                rows = [{"entry": canonical(e), **search_fields(e)} for e in chunk[offset:offset + BATCH]]
                log.checkpoint(log.tree.append_rows(rows))
            core_seconds += time.perf_counter() - start
            appended += count
        core_rate = (appended - len(sample)) / core_seconds if core_seconds else float("nan")

        size = log.size
        rng = random.Random(7)
        timings = []
        for _ in range(200):
            index = rng.randint(1, size)
            start = time.perf_counter()
            log.inclusion(index, size)
            timings.append(time.perf_counter() - start)
        inclusion_ms = statistics.median(timings) * 1000
        start = time.perf_counter()
        log.consistency(size // 3, size)
        consistency_ms = (time.perf_counter() - start) * 1000

        export = folder / "export.jsonl"
        start = time.perf_counter()
        with open(export, "wb") as handle:
            for line in log.export():
                handle.write(line)
        export_s = time.perf_counter() - start
        start = time.perf_counter()
        with open(export, "rb") as handle:
            report = verify_lines(handle, signer.verifier())
        verify_s = time.perf_counter() - start
        assert report.ok and report.entries == size, report.problems
        megabytes = export.stat().st_size / 1e6

    print(f"audit log, {size:,} entries (BALP AuditEvents, ~{megabytes / size * 1e6:.0f} bytes each), SQLite")
    print(f"  appends/s batched, log core (1,000/batch + signed checkpoint) {core_rate:10,.0f}   goal >= {GOAL_APPENDS:,}")
    print(f"  appends/s batched, API path (+ FHIR R4B validation)          {api_rate:10,.0f}")
    print(f"  inclusion proof at {size:,} (median of 200)                  {inclusion_ms:10.2f} ms")
    print(f"  consistency proof {size // 3:,} -> {size:,}                  {consistency_ms:10.2f} ms")
    print(f"  export {megabytes:,.0f} MB                                        {export_s:10.1f} s")
    print(f"  offline verification of all entries                          {verify_s:10.1f} s   goal < {GOAL_VERIFY_S:.0f} s")


if __name__ == "__main__":
    main()
