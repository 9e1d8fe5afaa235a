"""The portal's public `GET /login` keeps server-side state (state, nonce, PKCE verifier) per call.
Attack (fresh-eyes run, issue 13 "inputs bounded"): an anonymous client calling /login in a loop
grew that state without limit for the 10-minute login lifetime (2,000 calls on loopback: 2,000
entries kept), and every call scanned all of it. The pending logins must stay bounded (oldest
dropped first) and a fresh login must still work."""
from __future__ import annotations

import asyncio

from medplat.workloads.portal import identity
from medplat.workloads.portal.identity import RelyingParty


def test_anonymous_login_flood_keeps_pending_logins_bounded(monkeypatch):
    assert 0 < identity.MAX_PENDING_LOGINS <= 100_000
    monkeypatch.setattr(identity, "MAX_PENDING_LOGINS", 40)  # the real cap, scaled down to keep the test quick
    party = RelyingParty("https://idp.example", "medplat-portal", None, "https://portal.example/auth/callback")
    party.metadata = {"authorization_endpoint": "https://idp.example/authorize"}  # discovery is not the point here

    async def flood(n: int) -> list[str]:
        return [(await party.start())[1] for _ in range(n)]

    states = asyncio.run(flood(100))
    assert len(party.pending) <= 40
    assert states[-1] in party.pending, "the newest (real) login survives the flood"
    assert states[0] not in party.pending, "the oldest pending logins are dropped first"
