"""dicom-anonymizer: PS3.15 Annex E de-identification with options, consistent pseudonyms,
quarantine, leak scan and cohort k-anonymity; library, CLI and service."""
