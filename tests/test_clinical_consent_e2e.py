"""Consent before data leaves the site, end to end: the clinical workflow asks the real consent
service (`medplat serve consent`, HTTP) and publishes to the edge-forwarder's topic on the real
Mosquitto (project config and ACL) only what it permits. Consents shaped like the FHIR R4 examples
consent-example-pkb (permit, purpose TREAT) and consent-example-Out (deny)."""
from __future__ import annotations

import time
import uuid

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest

from medplat.service.auth import mint_local_token
from medplat.service.mqtt import Publisher
from medplat.workloads.clinical_workflow import app as service
from services import Mosquitto, Service, free_port

SCOPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]}
PRIVACY = [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}]
POLICY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]}
TREAT = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}


def consent(patient: str, provision: dict) -> dict:
    return {"resourceType": "Consent", "id": uuid.uuid4().hex[:12], "status": "active", "scope": SCOPE,
            "category": PRIVACY, "patient": {"reference": patient}, "dateTime": "2016-06-16",
            "policyRule": POLICY, "provision": provision}


def stored_score(app, patient: str) -> None:
    """A NEWS2 Observation in the forwarding outbox, as the intake leaves it."""
    from medplat.workloads.clinical_workflow import store
    resource = {"resourceType": "Observation", "id": f"news2-{uuid.uuid4().hex}", "status": "final",
                "code": {"text": "NEWS2"}, "subject": {"reference": patient}, "valueInteger": 7}
    with app.state.engine.db.begin() as conn:
        conn.execute(store.forward_outbox.insert().values(patient=patient, resource=resource, state="pending"))


@pytest.mark.slow
def test_only_what_the_consent_service_permits_leaves_the_site(tmp_path):
    broker = Mosquitto(tmp_path / "broker")
    consents = Service("consent", {"data_dir": tmp_path / "consent"}, free_port(), tmp_path / "consent.log").start()
    app = None
    try:
        base = f"http://127.0.0.1:{consents.port}"
        writer = {"authorization": "Bearer " + mint_local_token(tmp_path / "consent", "consent", ["consent.write"],
                                                                "Practitioner/registrar")}
        for resource in (consent("Patient/permits", {"type": "permit", "purpose": [TREAT]}),
                         consent("Patient/refuses", {"type": "deny"})):
            httpx.post(f"{base}/Consent", json=resource, headers=writer).raise_for_status()
        decider = tmp_path / "decide.token"
        decider.write_text(mint_local_token(tmp_path / "consent", "consent", ["consent.decide"], "clinical-workflow"))
        received: list[dict] = []
        reader = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="forwarder-test")
        broker.login(reader, "edge-forwarder")
        reader.on_message = lambda _c, _u, message: received.append(orjson.loads(message.payload))
        reader.connect("127.0.0.1", broker.port)
        reader.subscribe("medplat/devices/clinical-workflow/#", qos=1)
        reader.loop_start()
        publisher = Publisher(broker.url_for("clinical-workflow"), "cw-out-test")
        app, _ = service.build(service.Settings(data_dir=tmp_path / "cw", consent_url=base,
                                                consent_token_file=decider), publisher)
        deadline = time.monotonic() + 10
        while not publisher.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        for patient in ("Patient/permits", "Patient/refuses", "Patient/no-consent"):
            stored_score(app, patient)
        app.state.worker.drain_forwarding()
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # anything else that was (wrongly) published would have arrived by now
        assert [m["resource"]["subject"]["reference"] for m in received] == ["Patient/permits"]
        assert received[0]["dataClass"] == "phi"
        assert app.state.worker.forwarded == 1 and app.state.worker.withheld == 2
        # the consent service unreachable: nothing leaves and nothing is marked withheld (it waits)
        consents.stop()
        app.state.worker.gate.cache.clear()
        stored_score(app, "Patient/permits")
        app.state.worker.drain_forwarding()
        assert app.state.worker.forwarded == 1 and app.state.worker.withheld == 2
        reader.loop_stop()
        publisher.close()
    finally:
        if app is not None:
            app.state.audit.close()
        consents.stop()
        broker.stop()
