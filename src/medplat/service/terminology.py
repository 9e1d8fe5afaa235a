"""Device terminology shared by the device adapters: MDC (ISO/IEEE 11073-10101) and UCUM."""
from __future__ import annotations

MDC = "urn:iso:std:iso:11073:10101"
UCUM = "http://unitsofmeasure.org"
# MDC dimension codes -> UCUM for the units bedside monitors send most (partial, extend as met).
MDC_TO_UCUM = {"262688": "%", "264864": "/min", "264928": "/min", "266016": "mm[Hg]", "268192": "Cel",
               "266560": "cm[H2O]", "263872": "kg", "263441": "cm", "265266": "L/min", "262656": "1"}


def mdc_unit(code: str) -> dict[str, str]:
    """An MDC unit code as system + code: UCUM where the dimension has a UCUM code, else MDC."""
    return {"system": UCUM, "code": MDC_TO_UCUM[code]} if code in MDC_TO_UCUM else {"system": MDC, "code": code}
