"""ingest: the EU PHI zone's mTLS-only, idempotent HTTPS endpoint for edge sites."""
