"""A message that cannot be accepted: the HL7 Table 0357 code, where, and why."""
from __future__ import annotations

# Table 0008: AR when the message fails acceptance (type, event, processing id, version) or the
# receiver fails for reasons unrelated to content (the sender decides whether to resend); AE for
# errors in the content.
REJECT_CODES = {200, 201, 202, 203}


class Hl7Error(Exception):
    def __init__(self, code: int, text: str, location: tuple = (), *, reject: bool | None = None) -> None:
        super().__init__(text)
        self.code, self.location = code, location  # location: (segment id, sequence, field[, component])
        self.ack = "AR" if (code in REJECT_CODES if reject is None else reject) else "AE"

    @property
    def where(self) -> str:
        """The location as people write it: OBX[2]-5."""
        if not self.location:
            return ""
        segment, *rest = self.location
        text = segment + (f"[{rest[0]}]" if rest else "")
        return text + "".join(f"{'-' if i == 0 else '.'}{part}" for i, part in enumerate(rest[1:]))

    def __str__(self) -> str:
        reason = super().__str__()
        return f"{self.where}: {reason}" if self.where else reason
