"""Compliance data of medplat (catalogs, mappings, residency), shipped as package data."""
