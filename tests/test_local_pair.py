"""The quickstart's local edge + cloud pair: queued while offline, drained over mTLS, counted."""
from __future__ import annotations

from medplat.localpair import run


def test_local_pair_queues_offline_then_delivers_everything_once(tmp_path):
    result = run(tmp_path / "pair", count=500)
    assert result.produced == 502
    assert result.queued_while_offline == 500, "the cloud was down: everything waited at the edge"
    assert result.refused_at_edge == {"policy": 1, "malformed": 1}
    assert result.delivered == result.stored_in_cloud == 500
