"""The one service foundation every medplat workload builds on.

App factory (`create_app`), settings from `MEDPLAT_<NAME>_*` environment variables with
embedded defaults, FHIR OperationOutcome errors, `/healthz`, a database session (SQLite by
default, PostgreSQL by URL), and mutual-TLS serving.
"""
