"""A publishable policy pack: `pulumi policy publish` uploads a folder and the service installs
its requirements.txt, so the pack folder carries medplat itself as a wheel next to the entry
point, and its requirements name that wheel (pip accepts a local path) and pulumi-policy."""
from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

from medplat.synth import SynthError

PACK_FILES = ("PulumiPolicy.yaml", "__main__.py")


def build(project_root: Path, target: Path) -> Path:
    """Write a self-contained pack folder; returns the path of its requirements.txt."""
    if target.exists() and any(target.iterdir()):
        raise SynthError(f"{target}: exists and is not empty")
    target.mkdir(parents=True, exist_ok=True)
    completed = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(target),
                                str(project_root)], capture_output=True, text=True)
    if completed.returncode != 0:
        raise SynthError(f"building the medplat wheel failed: {completed.stderr.strip().splitlines()[-1:]}")
    (wheel,) = target.glob("medplat-*.whl")
    pack = resources.files("medplat.policies") / "pack"
    for name in PACK_FILES:
        (target / name).write_text((pack / name).read_text(encoding="utf-8"), encoding="utf-8")
    requirements = target / "requirements.txt"
    requirements.write_text("# Self-contained: medplat (the policies, their mappings and data) ships as this wheel;\n"
                            "# its own dependencies resolve from PyPI.\n"
                            f"pulumi-policy>=1.21,<2\n./{wheel.name}\n", encoding="utf-8")
    return requirements
