"""Benchmark: offline synthesis of 1, 10 and 100 generated edge sites (plus their EU zone).

Goal (issue 2): 100 sites in <= 15 s on 2 cores, growing linearly. Also prints how long the
offline policy pack (31 CrossGuard policies, without checkov) takes over all of them.
Run on demand:
    python benchmarks/synth_scale.py [--sites 1 10 100]
"""
from __future__ import annotations

import argparse
import datetime
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from medplat.gate import check_inventories
from medplat.stackset import StackSet

REPO = Path(__file__).resolve().parents[1]
GOAL_SITES, GOAL_SECONDS = 100, 15.0


def generate(stacks: Path, count: int) -> list[str]:
    """eu-phi admitting `count` sites, and `count` edge stacks cloned from edge-dresden."""
    shutil.copy(REPO / "stacks" / "Pulumi.eu-phi.yaml", stacks)
    template = yaml.safe_load((REPO / "stacks" / "Pulumi.edge-dresden.yaml").read_text())
    phi = yaml.safe_load((stacks / "Pulumi.eu-phi.yaml").read_text())
    sites = [f"site{i:03d}" for i in range(count)]
    phi["config"]["medplat:euPhi"]["edgeSites"] = [
        {"site": site, "egressCidr": f"100.{64 + i // 256}.{i % 256}.0/29"} for i, site in enumerate(sites)]
    (stacks / "Pulumi.eu-phi.yaml").write_text(yaml.safe_dump(phi))
    for i, site in enumerate(sites):
        document = yaml.safe_load(yaml.safe_dump(template))
        edge = document["config"]["medplat:edge"]
        edge.update(site=site, hospital=f"Hospital {i}", egressCidr=f"100.{64 + i // 256}.{i % 256}.0/29")
        document["config"]["medplat:owner"] = f"clinical-it-{site}"
        (stacks / f"Pulumi.edge-{site}.yaml").write_text(yaml.safe_dump(document))
    return [f"edge-{site}" for site in sites]


def run(count: int) -> tuple[int, float, float]:
    """Resources, synthesis seconds, and seconds for the offline policy pack (no checkov)."""
    with tempfile.TemporaryDirectory() as tmp:
        stacks = Path(tmp)
        names = generate(stacks, count)
        stackset = StackSet(stacks)
        start = time.perf_counter()
        for name in ["eu-phi", *names]:
            stackset.synth(name)
        elapsed = time.perf_counter() - start
        resources = sum(len(r.inventory.resources) for r in stackset.results.values())
        entries = [(r.inventory.to_json(), None, list(r.config.waivers)) for r in stackset.results.values()]
        start = time.perf_counter()
        result = check_inventories(entries, datetime.date.today())
        policy_seconds = time.perf_counter() - start
        assert not result.blocking, [f.message for f in result.blocking][:3]
    return resources, elapsed, policy_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, nargs="+", default=[1, 10, 100])
    args = parser.parse_args()
    print(f"{'sites':>6} {'resources':>10} {'seconds':>9} {'resources/s':>12} {'s/site':>8} {'policy s':>9}")
    rows = []
    for count in args.sites:
        resources, elapsed, policy_seconds = run(count)
        rows.append((count, elapsed))
        print(f"{count:>6} {resources:>10} {elapsed:>9.2f} {resources / elapsed:>12.0f} {elapsed / count:>8.3f}"
              f" {policy_seconds:>9.2f}")
    if GOAL_SITES in dict(rows):
        seconds = dict(rows)[GOAL_SITES]
        verdict = "met" if seconds <= GOAL_SECONDS else "MISSED"
        print(f"goal: {GOAL_SITES} sites in <= {GOAL_SECONDS:.0f} s -> {seconds:.2f} s ({verdict})")
    if len(rows) >= 2:
        (n1, t1), (n2, t2) = rows[-2], rows[-1]
        print(f"growth {n1}->{n2} sites: x{t2 / t1:.1f} time for x{n2 / n1:.0f} sites (linear = x{n2 / n1:.0f})")


if __name__ == "__main__":
    main()
