"""audit-log: tamper-evident FHIR AuditEvent log (RFC 6962 Merkle tree, signed checkpoints)."""
