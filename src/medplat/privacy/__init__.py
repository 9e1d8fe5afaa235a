"""Privacy models shared by the de-identification workloads (k-anonymity, risk)."""
