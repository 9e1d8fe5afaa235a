"""Device registry tables: one row per device instance (UDI-DI + serial), its software, and the
onboarding challenge it was last issued."""
from __future__ import annotations

from sqlalchemy import JSON, Column, Date, DateTime, Float, ForeignKey, Integer, MetaData, String, Table

metadata = MetaData()
devices = Table(
    "devices", metadata,
    Column("id", String(120), primary_key=True),  # <GTIN>.<serial>
    Column("udi", String(200), nullable=False),
    Column("udi_di", String(14), nullable=False, index=True),
    Column("serial", String(40), nullable=False),
    Column("lot", String(40)),
    Column("expiry", Date),
    Column("manufactured", Date),
    Column("site", String(64), nullable=False, index=True),
    Column("hardware", String(64), nullable=False),
    Column("rollout_group", String(64), nullable=False),
    Column("maintenance_days", Integer, nullable=False),
    Column("last_maintenance", DateTime(timezone=True)),
    Column("cert_fingerprint", String(64)),  # SHA-256 of the bound client certificate (DER)
    Column("onboarded_at", DateTime(timezone=True)),
    Column("status", String(32), nullable=False),  # registered | onboarded | ok | degraded | fault
    Column("last_heartbeat", DateTime(timezone=True)),
    Column("telemetry", JSON),
)
software = Table(
    "device_software", metadata,
    Column("device", String(120), ForeignKey("devices.id"), primary_key=True),
    Column("component", String(120), primary_key=True),
    Column("version", String(64), nullable=False),
    Column("sbom", String(500)),  # reference to the component's CycloneDX SBOM
)
# Onboarding challenges live in the database, not in one process: a challenge issued by one replica
# is honoured by another and survives a restart. One row per device (a new challenge replaces the
# last); only the nonce's SHA-256 is stored, so a database reader cannot answer a challenge.
challenges = Table(
    "onboarding_challenges", metadata,
    Column("device", String(120), ForeignKey("devices.id"), primary_key=True),
    Column("nonce_sha256", String(64), nullable=False),
    Column("expires_at", Float, nullable=False, index=True),  # Unix seconds (wall clock, shared by replicas)
)
