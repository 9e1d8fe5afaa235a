"""Synthesize several stacks in dependency order, resolving StackReferences between them."""
from __future__ import annotations

from pathlib import Path

from medplat import config as stack_config
from medplat.paths import stack_file, stack_names
from medplat.synth import PROJECT, SynthError, SynthResult, synthesize


def referenced_stack(reference: str, source: str) -> str:
    """`org/medplat/eu-phi` -> `eu-phi`; references to other projects cannot be synthesized."""
    _org, project, stack = reference.split("/")
    if project != PROJECT:
        raise SynthError(f"{source}: medplat:edge.cloudStack: project {project!r} is not {PROJECT!r}; "
                         "offline synthesis resolves references only within this project")
    return stack


class StackSet:
    """Memoized synthesis of the stacks in one stacks folder."""

    def __init__(self, stacks_dir: Path) -> None:
        self.stacks_dir = stacks_dir
        self.results: dict[str, SynthResult] = {}
        self._active: list[str] = []

    def names(self) -> list[str]:
        return stack_names(self.stacks_dir)

    def synth(self, stack: str) -> SynthResult:
        if stack in self.results:
            return self.results[stack]
        if stack in self._active:
            raise SynthError(f"stack references form a cycle: {' -> '.join([*self._active, stack])}")
        self._active.append(stack)
        try:
            path = stack_file(self.stacks_dir, stack)
            cfg = stack_config.load_stack(path)
            references = {}
            if cfg.edge is not None:
                target = referenced_stack(cfg.edge.cloud_stack, str(path))
                references[cfg.edge.cloud_stack] = self.synth(target).outputs
            self.results[stack] = synthesize(stack, self.stacks_dir, references)
        finally:
            self._active.pop()
        return self.results[stack]
