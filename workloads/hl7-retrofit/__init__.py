"""hl7-retrofit: MLLP listener for HL7 v2 ORU^R01 (IHE PCD-01) from legacy monitors -> FHIR R4."""
