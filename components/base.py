"""Shared base for medplat components: children are parented and labelled by the component."""
from __future__ import annotations

from typing import Any, TypeVar

import pulumi

from medplat.components.labels import CHILD_CLASSES_OUTPUT, LABELS_OUTPUT, Labels, attach

R = TypeVar("R", bound=pulumi.Resource)


class LabelledComponent(pulumi.ComponentResource):
    """A ComponentResource whose children inherit its `medplat:*` labels."""

    def __init__(self, type_: str, name: str, labels: Labels, opts: pulumi.ResourceOptions | None) -> None:
        super().__init__(type_, name, None, opts)
        self.labels = labels
        self.resource_name = name
        self._child_classes: dict[str, str] = {}

    def child(
        self,
        cls: type[R],
        name: str,
        /,
        *,
        data_class: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
        **props: Any,
    ) -> R:
        """Create `cls` as a child named `<component>-<name>`, labelled for `data_class`."""
        labels = self.labels.with_class(data_class)
        labelled = attach(cls, props, labels)
        merged = pulumi.ResourceOptions.merge(pulumi.ResourceOptions(parent=self), opts)
        full_name = f"{self.resource_name}-{name}"
        # Recorded for children whose type cannot carry labels (the inventory reads it).
        self._child_classes[full_name] = labels.data_class
        return cls(full_name, opts=merged, **labelled)

    def finish(self, outputs: dict[str, Any]) -> None:
        """Register outputs; the labels go along so untaggable children can be attributed."""
        self.register_outputs({
            LABELS_OUTPUT: self.labels.as_dict(),
            CHILD_CLASSES_OUTPUT: dict(sorted(self._child_classes.items())),
            **outputs,
        })
