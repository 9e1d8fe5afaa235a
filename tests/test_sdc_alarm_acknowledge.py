"""sdc-bridge: an alarm acknowledgement is attributed to the authenticated caller.

Found by a fresh-eyes attacker test: `POST /alarms/{id}/acknowledge?by=<anyone>` recorded the
acknowledgement under whatever name the caller put in the query (default "unknown"), so a holder
of `alarms.acknowledge` could silence an escalation in a colleague's name and the decision log and
audit trail could not say who did it (IEC 60601-1-8 alarm acknowledgement is a clinical action;
the Security model requires every record to name the authenticated caller).
A real sdc11073 provider raises the alarm (tests/test_sdc_bridge.py's Monitor), the real Mosquitto
carries it."""
from __future__ import annotations

from fastapi.testclient import TestClient

from identities import bearer
from test_sdc_bridge import Monitor, bridge_for, broker, wait  # noqa: F401 (broker is a fixture)


def test_acknowledgement_names_the_token_subject_not_a_query_parameter(tmp_path, broker):  # noqa: F811
    server, _ = broker
    monitor = Monitor()
    app, _ = bridge_for(tmp_path, server.url_for("sdc-bridge"), providers=[monitor.xaddr])
    try:
        monitor.alert(True)
        assert wait(lambda: app.state.router.active)
        (alarm,) = app.state.router.active.values()
        client = TestClient(app)
        token = bearer(tmp_path / "bridge", "sdc-bridge", "alarms.acknowledge", subject="nurse-7")
        reply = client.post(f"/alarms/{alarm.id}/acknowledge", params={"by": "dr-someone-else"}, headers=token)
        assert reply.status_code == 200, reply.text
        (decision,) = [d for d in app.state.router.decisions if d["decision"] == "acknowledged"]
        assert decision["by"] == "nurse-7"
        assert client.post(f"/alarms/{alarm.id}/acknowledge").status_code == 401
    finally:
        app.state.bridge.stop()
        monitor.stop()
