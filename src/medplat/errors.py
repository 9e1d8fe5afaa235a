"""Error types the `medplat` command reports as one line, importable without Pulumi.

Service images start through the `medplat` command but carry no Pulumi (their locks hold only what
they run), so the command line must not import `medplat.synth` to know its error type.
"""
from __future__ import annotations


class SynthError(Exception):
    """One-line synthesis failure."""
