"""consent: FHIR R4 Consent store and decision service (permit / deny / not-applicable)."""
