"""GS1 UDI strings -> UDI-DI (GTIN) and UDI-PI (lot, serial, expiry, manufacture date), with biip.

Accepts the human-readable form "(01)…(21)…" and the barcode data form (FNC1 as GS, with or
without a symbology identifier such as "]d2"). HIBCC UDIs are not supported yet.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass

from biip import ParseError, parse
from biip.gs1_messages import GS1Message


class UdiError(ValueError):
    pass


@dataclass(frozen=True)
class Udi:
    di: str  # the GTIN-14
    serial: str | None
    lot: str | None
    expiry: datetime.date | None
    manufactured: datetime.date | None

    @property
    def device_id(self) -> str:
        """Registry key of one device instance: GTIN and serial number."""
        return f"{self.di}.{self.serial}"


def parse_udi(value: str) -> Udi:
    text = value.strip()
    if not text:
        raise UdiError("empty UDI")
    try:
        message = GS1Message.parse_hri(text) if text.startswith("(") else parse(text).gs1_message
    except ParseError as exc:
        raise UdiError(str(exc)) from None
    if message is None:
        result = parse(text)
        raise UdiError(result.gs1_message_error or "not a GS1 element string")
    elements = {element.ai.ai: element for element in message.element_strings}
    gtin = elements.get("01")
    if gtin is None:
        raise UdiError("no UDI-DI: AI (01) GTIN is missing")
    if gtin.gtin is None:
        raise UdiError(gtin.gtin_error or f"invalid GTIN {gtin.value}")
    unknown = sorted(set(elements) - {"01", "10", "11", "17", "21", "30", "7240"})
    if unknown:
        raise UdiError(f"AI ({unknown[0]}) is not part of a UDI")
    serial, lot = elements.get("21"), elements.get("10")
    if serial is None:
        raise UdiError("a device instance needs its serial number: AI (21) is missing")
    expiry, made = elements.get("17"), elements.get("11")
    return Udi(di=gtin.value, serial=serial.value, lot=lot.value if lot else None,
               expiry=expiry.date if expiry else None, manufactured=made.date if made else None)
