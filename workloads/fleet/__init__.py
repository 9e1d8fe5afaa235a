"""fleet: device registry by UDI, certificate-bound onboarding, heartbeats, maintenance, TUF updates."""
