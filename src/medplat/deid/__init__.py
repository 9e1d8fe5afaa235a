"""FHIR de-identification shared by the research export, the analytics feed and telemetry:
FHIRPath rules in Microsoft FHIR Tools for Anonymization's configuration format, keys from
one project key domain (see medplat.deid.engine for what differs from that tool)."""
from medplat.deid.config import Config, ConfigError, builtin, load_config
from medplat.deid.engine import DeidError, Deidentifier, shift
from medplat.deid.keys import KeyDomain, date_shift_days, load_key

__all__ = ["Config", "ConfigError", "DeidError", "Deidentifier", "KeyDomain", "builtin", "date_shift_days", "load_key",
           "load_config", "shift"]
