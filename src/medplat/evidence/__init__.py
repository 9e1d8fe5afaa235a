"""Compliance evidence: control matrix, SBOMs, OSCAL results, HTML report, signed bundles."""
