"""The script environment of the workflow engine: BPMN conditions, DMN entries, timer expressions
and script tasks are compiled with RestrictedPython (no imports, no dunder access, no I/O) and run
against the task's data only. Hospitals may edit processes in a modeler; the sandbox keeps a
mistaken or hostile expression from reaching the service."""
from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from RestrictedPython import compile_restricted_eval, compile_restricted_exec, limited_builtins, safe_builtins
from RestrictedPython.Eval import default_guarded_getitem, default_guarded_getiter
from RestrictedPython.Guards import full_write_guard, guarded_iter_unpack_sequence, safer_getattr
from SpiffWorkflow.bpmn.script_engine import PythonScriptEngine, TaskDataEnvironment

BUILTINS = {**safe_builtins, **limited_builtins, "min": min, "max": max, "sum": sum, "any": any, "all": all,
            "sorted": sorted, "dict": dict, "list": list}
GUARDS = {"__builtins__": BUILTINS, "_getattr_": safer_getattr, "_getitem_": default_guarded_getitem,
          "_getiter_": default_guarded_getiter, "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
          "_write_": full_write_guard}


class SandboxError(ValueError):
    """An expression or script the sandbox refuses to compile."""


@lru_cache(maxsize=1024)
def _compiled_eval(expression: str):
    result = compile_restricted_eval(expression, "<bpmn expression>")
    if result.errors:
        raise SandboxError("; ".join(result.errors))
    return result.code


@lru_cache(maxsize=256)
def _compiled_exec(script: str):
    result = compile_restricted_exec(script, "<bpmn script>")
    if result.errors:
        raise SandboxError("; ".join(result.errors))
    return result.code


class RestrictedEnvironment(TaskDataEnvironment):
    def evaluate(self, expression: str, context: dict[str, Any], external_context: dict | None = None) -> Any:
        scope = {**GUARDS, **(external_context or {}), **context}
        return eval(_compiled_eval(expression), scope)  # noqa: S307 - RestrictedPython bytecode, guarded scope

    def execute(self, script: str, context: dict[str, Any], external_context: dict | None = None) -> bool:
        scope = {**GUARDS, **(external_context or {}), **copy.copy(context)}
        exec(_compiled_exec(script), scope)  # noqa: S102 - RestrictedPython bytecode, guarded scope
        for name, value in scope.items():
            if name not in GUARDS and not name.startswith("_") and not callable(value) and \
                    name not in (external_context or {}):
                context[name] = value
        return True


def script_engine() -> PythonScriptEngine:
    return PythonScriptEngine(environment=RestrictedEnvironment())
