"""Write every service image's `requirements.lock` from one pip resolution.

Each image installs the medplat distribution, so one resolution serves them all; the lock is
what the image installs (`pip install --no-deps -r`) and what its CycloneDX SBOM lists.
Run from the repository root after changing dependencies:
    python -m medplat.workloads.lock [--report r.json]
(without --report it runs `pip install --dry-run --ignore-installed --report` itself).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from medplat.workloads import images

HEADER = ("# Resolved dependencies of the medplat distribution that the {name} image installs.\n"
          "# Regenerate from the repository root: python -m medplat.workloads.lock\n")


def resolve(root: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
                        "--report", str(report), str(root)], check=True)
        return json.loads(report.read_text())


def pins(report: dict) -> list[str]:
    found = sorted((item["metadata"]["name"], item["metadata"]["version"]) for item in report["install"]
                   if item["metadata"]["name"] != "medplat")
    return [f"{name}=={version}" for name, version in found]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, help="an existing `pip install --report` file")
    parser.add_argument("--root", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text()) if args.report else resolve(args.root)
    body = "\n".join(pins(report)) + "\n"
    for name in images():
        (args.root / "workloads" / name / "requirements.lock").write_text(HEADER.format(name=name) + body)
    print(f"{len(images())} locks, {len(pins(report))} packages each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
