"""Shared by the portal tests: sign in through the real OpenID Connect code flow of the local issuer."""
from __future__ import annotations

import re
from pathlib import Path

from medplat.workloads.portal.identity import demo_password


def sign_in(client, user: str, data_dir: Path) -> None:
    """Follow /login → issuer sign-in form → callback, as a browser would; leaves the session cookie set."""
    response = client.get("/login", follow_redirects=False)
    assert response.status_code == 303, response.text
    form = client.get(response.headers["location"])
    assert form.status_code == 200
    fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', form.text))
    fields.update(user=user, password=demo_password(data_dir))
    issued = client.post("/local-issuer/authorize", data=fields, follow_redirects=False)
    assert issued.status_code == 303, issued.text
    done = client.get(issued.headers["location"], follow_redirects=False)
    assert done.status_code == 303, done.text


def csrf_of(html: str) -> str:
    return re.search(r'"X-CSRF-Token": "([^"]+)"', html).group(1)


# ---- the real clinical-workflow service next to the portal ------------------------------------------------

MDC, UCUM, SNOMED = "urn:iso:std:iso:11073:10101", "http://unitsofmeasure.org", "http://snomed.info/sct"
# MDC code and UCUM unit per device vital sign, as the sdc-bridge maps them (workloads/sdc-bridge/mapping.py).
DEVICE_VITALS = {"respiration_rate": ("151562", "/min"), "spo2": ("150456", "%"), "systolic_bp": ("150021", "mm[Hg]"),
                 "pulse": ("147842", "/min"), "temperature": ("150364", "Cel")}


def start_workflow(folder: Path, portal_data: Path, issuer: str, broker, census):
    """`medplat serve clinical-workflow` trusting the portal's OpenID issuer (its JWKS as a file), each
    census device assigned to its patient; the portal reads it with its service token and acts with the
    clinician's access token, both from that issuer."""
    import json

    from joserfc.jwk import KeySet

    from medplat.workloads.portal.identity import _issuer_key
    from services import Service, free_port

    folder.mkdir(parents=True, exist_ok=True)
    jwks = folder / "portal-issuer.jwks.json"
    jwks.write_text(json.dumps(KeySet([_issuer_key(portal_data)]).as_dict(private=False)))
    devices = {device: p.reference for p in census.patients.values() for device in p.devices}
    return Service("clinical-workflow", {
        "data_dir": folder / "data", "broker_url": broker.url_for("clinical-workflow"),
        "auth_issuer": issuer, "auth_jwks": str(jwks), "auth_audience": "clinical-workflow",
        "device_patients": json.dumps(devices), "tick_s": "0.2"}, free_port(), folder / "workflow.log").start()


def record_staff_observations(workflow_base: str, portal_data: Path, issuer: str, patient: str) -> None:
    """ACVPU alert and on air, charted by a nurse (a token from the same issuer): NEWS2 needs them."""
    import datetime

    import httpx

    from medplat.workloads.portal.identity import mint_access_token

    token = mint_access_token(portal_data, issuer, ["clinical-workflow"], "Practitioner/nurse-1", ["observation.write"])
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    for code, body in (("1104441000000107", {"valueString": "A"}), ("1104331000000105", {"valueBoolean": False})):
        staff = {"resourceType": "Observation", "id": f"staff-{code}", "status": "final",
                 "code": {"coding": [{"system": SNOMED, "code": code}]}, "subject": {"reference": patient},
                 "effectiveDateTime": now, **body}
        response = httpx.post(f"{workflow_base}/Observation", json=staff,
                              headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 201, response.text


def publish_vitals(publisher, device: str, **values: float) -> None:
    """Device Observations in the sdc-bridge's envelope on the site broker, one per vital sign."""
    import datetime
    import json
    import uuid

    for parameter, value in values.items():
        code, unit = DEVICE_VITALS[parameter]
        resource = {"resourceType": "Observation", "id": f"obs-{uuid.uuid4().hex}", "status": "final",
                    "code": {"coding": [{"system": MDC, "code": code}]}, "device": {"reference": f"Device/{device}"},
                    "effectiveDateTime": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    "valueQuantity": {"value": value, "system": UCUM, "code": unit}}
        envelope = {"id": f"Observation-{resource['id']}", "device": device, "dataClass": "phi", "resource": resource}
        publisher.publish(f"medplat/devices/{device}/observation", json.dumps(envelope), qos=1).wait_for_publish(5)


class Served:
    """An ASGI app served by uvicorn in a thread on loopback (server-sent events and other
    services' HTTP calls need a real server); `port` when the app had to know it beforehand,
    `ssl` as uvicorn's ssl_* options."""

    def __init__(self, app, port: int | None = None, **ssl) -> None:
        import threading

        import uvicorn

        from services import free_port, wait_for_port

        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", **ssl))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for_port(self.port)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
