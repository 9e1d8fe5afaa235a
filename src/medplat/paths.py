"""Where stacks live: the project checkout (nearest Pulumi.yaml) or the packaged examples."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

STACK_PREFIX, STACK_SUFFIX = "Pulumi.", ".yaml"


class StackNotFound(Exception):
    pass


def project_root(start: Path | None = None) -> Path | None:
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "Pulumi.yaml").is_file() and (folder / "stacks").is_dir():
            return folder
    return None


def default_stacks_dir() -> Path:
    root = project_root()
    if root is not None:
        return root / "stacks"
    return Path(str(resources.files("medplat.stacks")))


def stack_names(stacks_dir: Path) -> list[str]:
    return sorted(p.name[len(STACK_PREFIX):-len(STACK_SUFFIX)] for p in stacks_dir.glob(f"{STACK_PREFIX}*{STACK_SUFFIX}"))


def stack_file(stacks_dir: Path, stack: str) -> Path:
    path = stacks_dir / f"{STACK_PREFIX}{stack}{STACK_SUFFIX}"
    if not path.is_file():
        known = ", ".join(stack_names(stacks_dir)) or "none"
        raise StackNotFound(f"{path}: no such stack; stacks in {stacks_dir}: {known}")
    return path
