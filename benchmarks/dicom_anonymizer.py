"""Benchmark: DICOM de-identification throughput and k-anonymity, next to the named peers.

One run, the same corpus for every tool, single process:
  small   N copies of pydicom's small CT/MR/RT files, each with its own patient and UIDs
  small CT  N copies of pydicom's CT_small.dcm alone (the files the 4x goal names)
  large   M synthetic 512x512 16-bit CT slices (~0.5 MB each)
Tools: medplat (full basic profile: no options, leak scan, quarantine checks, report),
dicognito (its Anonymizer, read/anonymize/write per file), deid (pydicom/deid's default
recipe via replace_identifiers), gdcmanon (Debian libgdcm-tools, basic profile with an
encryption certificate), and plain `cp -r` as the I/O ceiling.
Then UCI Adult, k = 5 over the 8 usual quasi-identifiers: medplat's optimum next to anjana.
Goals (issue 15): >= 4x dicognito's files/s on small files; >= 50 % of cp's MB/s on large ones;
2 workers >= 1.7x one.
Run on demand:
    python benchmarks/dicom_anonymizer.py [--small 400] [--large 100]
"""
from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medplat.workloads.dicom_anonymizer.deid import Keys
from medplat.privacy.kanon import Anonymizer, Hierarchy
from medplat.workloads.dicom_anonymizer.policy import Policy
from medplat.workloads.dicom_anonymizer.run import anonymize_tree

# Run as a script, this folder comes first on sys.path and its deid.py (another benchmark) would
# hide the `deid` package, one of the peers.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

ADULT = next(p / "shared" / "data" for p in Path(__file__).resolve().parents
             if (p / "shared" / "data").is_dir()) / "adult"
QIS = ["sex", "age", "race", "marital-status", "education", "native-country", "workclass", "occupation"]
BASIC = Policy.model_validate({"name": "basic", "intendedUse": "benchmark: basic profile, no options",
                               "patientIdDomain": "bench", "quarantine": {"secondaryCapture": False, "modalities": []}})


def corpus(folder: Path, small: int, large: int) -> tuple[Path, Path, Path]:
    small_dir, ct_dir, large_dir = folder / "small", folder / "small-ct", folder / "large"
    samples = [dcmread(get_testdata_file(n), force=True) for n in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")]
    for i in range(2 * small):
        ds = samples[i % len(samples) if i < small else 0].copy()
        ds.PatientID, ds.PatientName = f"PAT{i:06d}", f"Doe^John{i}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = generate_uid()
        target = (small_dir if i < small else ct_dir) / f"p{i // 50:03d}" / f"{i:06d}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target, enforce_file_format=False)
    template = dcmread(get_testdata_file("CT_small.dcm"))
    rng = np.random.default_rng(1)
    for i in range(large):
        ds = template.copy()
        ds.Rows = ds.Columns = 512
        ds.PixelData = rng.integers(0, 4096, (512, 512), dtype=np.uint16).tobytes()
        ds.PatientID, ds.PatientName = f"BIG{i // 20:04d}", f"Roe^Jane{i // 20}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        target = large_dir / f"s{i // 20:03d}" / f"{i:06d}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target, enforce_file_format=False)
    return small_dir, ct_dir, large_dir


def size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def run_medplat(source: Path, out: Path, workers: int = 1) -> None:
    report = anonymize_tree(source, out, BASIC, Keys(b"p" * 32, b"q" * 32), workers=workers)
    assert report["quarantined"] == 0, [r for r in report["results"] if r["status"] != "anonymized"][:3]


def run_dicognito(source: Path, out: Path) -> None:
    from dicognito.anonymizer import Anonymizer as Dicognito

    anonymizer = Dicognito()
    for path in sorted(source.rglob("*.dcm")):
        ds = dcmread(path)
        anonymizer.anonymize(ds)
        target = out / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target)


def run_deid(source: Path, out: Path) -> None:
    from deid.dicom import replace_identifiers

    out.mkdir(parents=True, exist_ok=True)
    files = [str(p) for p in sorted(source.rglob("*.dcm"))]
    replace_identifiers(dicom_files=files, save=True, output_folder=str(out), overwrite=True)


def run_gdcmanon(source: Path, out: Path, certificate: Path) -> None:
    subprocess.run(["gdcmanon", "--continue", "-e", "--certificate", str(certificate), "-r", "-i", str(source),
                    "-o", str(out)], check=True, capture_output=True)


def run_cp(source: Path, out: Path) -> None:
    subprocess.run(["cp", "-r", str(source), str(out)], check=True)


def certificate(folder: Path) -> Path | None:
    key, cert = folder / "key.pem", folder / "cert.pem"
    done = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                           str(cert), "-days", "1", "-subj", "/CN=medplat-benchmark"], capture_output=True)
    return cert if done.returncode == 0 else None


def _cpu() -> float:
    """CPU seconds of this process and its finished children (worker pools, cp, gdcmanon)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed(tool, source: Path, out: Path) -> tuple[float, float] | None:
    """(wall seconds, CPU seconds): other work on a shared machine stretches the first, not the second."""
    shutil.rmtree(out, ignore_errors=True)
    start, cpu = time.perf_counter(), _cpu()
    try:
        tool(source, out)
    except (FileNotFoundError, subprocess.CalledProcessError, ImportError) as exc:
        print(f"    ({getattr(tool, '__name__', tool)} unavailable: {type(exc).__name__})", file=sys.stderr)
        return None
    return time.perf_counter() - start, _cpu() - cpu


def adult_rows():
    rows = list(csv.reader(open(ADULT / "adult.csv"), delimiter=";"))
    header, body = rows[0], rows[1:]
    index = [header.index(q) for q in QIS]
    hierarchies = [Hierarchy.from_rows(list(csv.reader(open(ADULT / f"adult_hierarchy_{q}.csv"), delimiter=";")))
                   for q in QIS]
    return header, body, [[row[i] for i in index] for row in body], hierarchies


def discernibility(rows: list[tuple], n: int, suppressed: int) -> int:
    from collections import Counter

    return sum(c * c for c in Counter(rows).values()) + suppressed * n


def run_anjana(header, body, k: int):
    import pandas as pd
    from anjana.anonymity import k_anonymity

    data = pd.DataFrame(body, columns=header)
    data["age"] = data["age"].astype(str)
    hierarchies = {q: {i: list(col) for i, col in enumerate(zip(*csv.reader(open(ADULT / f"adult_hierarchy_{q}.csv"),
                                                                              delimiter=";")))} for q in QIS}
    start = time.perf_counter()
    result = k_anonymity(data, [], QIS, k, 0, hierarchies)
    seconds = time.perf_counter() - start
    rows = [tuple(r) for r in result[QIS].astype(str).itertuples(index=False)]
    return seconds, discernibility(rows, len(body), len(body) - len(rows))


def _ratios(figures: dict[str, tuple[float, float]]) -> None:
    """Goal ratios by wall time (the goals' terms) and by CPU time (robust to a shared machine)."""
    def ratio(faster: str, slower: str, index: int) -> float:
        return figures[slower][index] / figures[faster][index]

    if "medplat" in figures and "dicognito" in figures:
        print(f"  medplat / dicognito files/s: x{ratio('medplat', 'dicognito', 0):.2f} wall,"
              f" x{ratio('medplat', 'dicognito', 1):.2f} CPU (goal x4)")
    if "medplat" in figures and "medplat 2w" in figures:
        print(f"  medplat 2 workers / 1 worker: x{ratio('medplat 2w', 'medplat', 0):.2f} wall (goal x1.7)")
    if "medplat" in figures and "cp -r" in figures:
        print(f"  medplat / cp MB/s: {ratio('medplat', 'cp -r', 0):.0%} wall, {ratio('medplat', 'cp -r', 1):.0%} CPU"
              " (goal >= 50 % on 512x512)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=400)
    parser.add_argument("--large", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        small_dir, ct_dir, large_dir = corpus(folder, args.small, args.large)
        cert = certificate(folder)
        tools = {"medplat": run_medplat, "medplat 2w": lambda s, o: run_medplat(s, o, workers=2),
                 "dicognito": run_dicognito, "deid": run_deid,
                 "gdcmanon": (lambda s, o: run_gdcmanon(s, o, cert)) if cert else None, "cp -r": run_cp}
        print("load average (1, 5, 15 min): %.2f %.2f %.2f on %d CPUs" % (*os.getloadavg(), os.cpu_count()))
        for label, source in (("small files (CT, MR, RT plan)", small_dir), ("small CT files", ct_dir),
                              ("512x512 CT", large_dir)):
            count, total = size(source)
            print(f"{label}: {count} files, {total / 1e6:.1f} MB")
            figures = {}
            for name, tool in tools.items():
                measured = timed(tool, source, folder / "out" / name) if tool else None
                if measured is None:
                    print(f"  {name:10} n/a")
                    continue
                seconds, cpu = figures[name] = measured
                print(f"  {name:10} {count / seconds:10,.0f} files/s {total / 1e6 / seconds:10,.1f} MB/s"
                      f"   CPU {cpu / count * 1e3:7.2f} ms/file")
            _ratios(figures)
        print("load average (1, 5, 15 min): %.2f %.2f %.2f" % os.getloadavg())
    header, body, rows, hierarchies = adult_rows()
    result = Anonymizer(rows, hierarchies).anonymize(5, 0.0)
    print(f"UCI Adult, k=5, 8 quasi-identifiers, no suppression ({len(rows)} records)")
    print(f"  medplat   optimal node {result.node}  {result.seconds:7.2f} s  discernibility {result.discernibility:,}"
          f"  ({result.checked} of {result.lattice_size} lattice nodes grouped)")
    try:
        seconds, loss = run_anjana(header, body, 5)
        print(f"  anjana                         {seconds:7.2f} s  discernibility {loss:,}")
    except Exception as exc:  # a peer's failure is reported, not fatal
        print(f"  anjana    n/a ({type(exc).__name__}: {exc})")


if __name__ == "__main__":
    main()
