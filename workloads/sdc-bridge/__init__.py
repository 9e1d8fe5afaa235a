"""sdc-bridge: IEEE 11073 SDC providers -> FHIR R4 (PoCD IG) on the site broker; alarm routing."""
