"""The one service foundation every medplat workload builds on.

App factory (`create_app`: default-deny route access, OperationOutcome errors, body limits,
probes, metrics), access declarations (`access`: mTLS peers, bearer scopes, public with a
reason), bearer tokens (`auth`), settings from `MEDPLAT_<NAME>_*` environment variables with
embedded defaults, JSON logs (`logs`), PHI-free OpenTelemetry traces (`tracing`), audit records
(`audit`), the MQTT client (`mqtt`), a database engine (SQLite by default, PostgreSQL by URL) with
Alembic migrations (`migrations`) and mutual-TLS serving (`tls`).
"""
