"""Third-party tools used as independent oracles, each in its own virtual environment.

pycanon pins exact versions of typing_extensions, numpy and typer that conflict with the
project's (pydantic needs a newer typing_extensions), so, like checkov, it lives in a venv of its
own under the tools folder and is called as a subprocess with the table on stdin.
"""
from __future__ import annotations

import json
import subprocess
import venv

from medplat.checkov import TOOLS

PYCANON_VERSION = "1.3.6"
_PYCANON_SCRIPT = """
import json, sys
import pandas as pd
from pycanon import anonymity
job = json.load(sys.stdin)
table = pd.DataFrame(job["rows"])
print(json.dumps([anonymity.k_anonymity(table, job["qis"]),
                  anonymity.l_diversity(table, job["qis"], [job["sensitive"]])]))
"""


def _pycanon_python():
    home = TOOLS / f"pycanon-{PYCANON_VERSION}"
    python = home / "bin" / "python"
    if not (home / ".installed").exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(home)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"pycanon=={PYCANON_VERSION}"], check=True)
        (home / ".installed").touch()
    return python


def pycanon_k_l(rows: list[dict], qis: list[str], sensitive: str) -> tuple[int, int]:
    """k-anonymity and (distinct) l-diversity of a table as pycanon computes them."""
    result = subprocess.run([str(_pycanon_python()), "-c", _PYCANON_SCRIPT], check=True, capture_output=True,
                            input=json.dumps({"rows": rows, "qis": qis, "sensitive": sensitive}).encode())
    k, l_ = json.loads(result.stdout)
    return int(k), int(l_)
