"""pseudonymizer: keyed pseudonyms per domain, optional reversible mapping, FHIR $pseudonymize."""
