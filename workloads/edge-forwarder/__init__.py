"""edge-forwarder: the site's durable outbox from the MQTT broker to the EU ingest over mTLS."""
