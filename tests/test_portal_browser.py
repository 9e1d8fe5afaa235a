"""portal in real headless Chromium (Debian chromium + chromium-driver, Selenium): sign in per role, see
what the role may and be refused what it may not, watch a vital sign change after an Observation is
published on the real Mosquitto, acknowledge an alarm, open a control's drill-down; axe-core 4.10.2
(npm, vendored in tests/data/axe-core, MPL-2.0) finds no serious or critical WCAG 2.1 A/AA violation
on any page. Screenshots land in the test's tmp folder."""
from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from medplat.workloads.portal import sources
from medplat.workloads.portal.app import Settings, build
from medplat.workloads.portal.identity import demo_password, mint_access_token
from portal_helpers import Served, publish_vitals, record_staff_observations, start_workflow
from medplat.cli import app as cli
from medplat.service.audit import balp_event
from medplat.workloads.audit_log.app import Settings as AuditSettings, build as build_audit
from medplat.workloads.fleet.app import Settings as FleetSettings, build as build_fleet
from test_compliance_run import EXPORT, drifted_export, run as run_compliance
from typer.testing import CliRunner
from services import Mosquitto, free_port, wait_for_port
from test_portal import evidence, observation  # noqa: F401  (module fixture: a real signed bundle)

AXE = Path(__file__).parent / "data" / "axe-core" / "axe-4.10.2.min.js"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory, evidence):  # noqa: F811
    import shutil
    folder = tmp_path_factory.mktemp("portal-browser")
    shutil.copytree(evidence, folder / "build")
    broker = Mosquitto(folder / "broker")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    census = sources.demo_census(8)
    mint_access_token(folder / "data", base + "/local-issuer", ["x"], "setup", [])  # the issuer key, first
    workflow = start_workflow(folder / "workflow", folder / "data", base + "/local-issuer", broker, census)
    # Site operations: a real edge audit log and a real fleet service with a TUF repository.
    edge_log, _ = build_audit(AuditSettings(data_dir=folder / "edge-log", origin="site-a.medplat/audit"))
    edge_log.state.audit.append([balp_event("read", source="test", agent="x", patient="Patient/1")])
    assert CliRunner().invoke(cli, ["fleet", "init", str(folder / "tuf"), "--keys", str(folder / "keys")]).exit_code == 0
    fleet, _ = build_fleet(FleetSettings(data_dir=folder / "fleet", tuf_repository=folder / "tuf"))
    services = [Served(edge_log), Served(fleet)]
    # Compliance: two real compliance runs, the second drifted.
    assert run_compliance(folder / "compliance", EXPORT).exit_code == 1
    assert run_compliance(folder / "compliance", drifted_export(folder / "later.json")).exit_code == 1
    app, settings = build(Settings(data_dir=folder / "data", base_url=base, evidence_dir=folder / "build",
                                   workflow_url=f"http://127.0.0.1:{workflow.port}", feed_period_s=1.0,
                                   compliance_runs_dir=folder / "compliance",
                                   sites={"site-a": {"audit_log": f"http://127.0.0.1:{services[0].port}",
                                                     "fleet": f"http://127.0.0.1:{services[1].port}"}}),
                          census=census)
    subscriber = sources.subscribe(app.state.vitals, broker.url_for("portal"), "portal-browser", None, None)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=ChromeService("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)
    yield {"app": app, "settings": settings, "base": base, "broker": broker, "driver": driver, "folder": folder,
           "workflow": workflow}
    driver.quit()
    app.state.feeds.stop()
    workflow.stop()
    for served in services:
        served.stop()
    fleet.state.audit.close()
    subscriber.loop_stop()
    server.should_exit = True
    thread.join(timeout=10)
    broker.stop()
    app.state.audit.close()


def sign_in(stack, user: str) -> None:
    driver = stack["driver"]
    driver.delete_all_cookies()
    driver.get(stack["base"] + "/")
    driver.find_element(By.ID, "sign-in").click()
    Select(driver.find_element(By.ID, "user")).select_by_value(user)
    driver.find_element(By.ID, "password").send_keys(demo_password(stack["settings"].data_dir))
    check_accessibility(stack, "issuer sign-in")
    driver.find_element(By.ID, "submit").click()
    WebDriverWait(driver, 10).until(ec.presence_of_element_located((By.ID, "logout")))


def check_accessibility(stack, name: str) -> None:
    driver = stack["driver"]
    driver.execute_script(AXE.read_text())
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})"
        ".then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.length}))));")
    serious = [v for v in result if v["impact"] in ("serious", "critical")]
    driver.save_screenshot(str(stack["folder"] / f"{name.replace(' ', '-')}.png"))
    assert not serious, (name, serious)


def test_roles_see_their_views_and_are_refused_the_others(stack):
    driver = stack["driver"]
    expectations = {"dr-ward-a": ("/ward", ["/ops", "/compliance"]), "site-operator": ("/ops", ["/ward", "/compliance"]),
                    "compliance-officer": ("/compliance", ["/ward", "/ops"]), "admin": ("/ops", ["/ward"])}
    for user, (home, refused) in expectations.items():
        sign_in(stack, user)
        assert driver.current_url == stack["base"] + home, user
        check_accessibility(stack, f"{user} home")
        for path in refused:
            driver.get(stack["base"] + path)
            assert driver.find_element(By.ID, "error").get_attribute("data-status") == "403", (user, path)
        check_accessibility(stack, f"{user} refused")


def test_a_vital_sign_updates_live_and_an_alarm_is_acknowledged(stack):
    driver, app = stack["driver"], stack["app"]
    sign_in(stack, "dr-ward-a")
    census = app.state.census
    alarm = next(a for a in census.alarms.values() if a.kind == "alarm" and a.state == "active"
                 and census.patients[a.patient].ward == "ward-a")
    patient = census.patients[alarm.patient]
    driver.get(f"{stack['base']}/patient/{patient.id}")
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "stream-status").text == "live")
    check_accessibility(stack, "patient page")
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sdc-{uuid.uuid4().hex[:6]}")
    Mosquitto.login(publisher, "sdc-bridge")
    publisher.connect("127.0.0.1", stack["broker"].port)
    publisher.loop_start()
    try:
        sent = time.time()
        envelope = {"id": str(uuid.uuid4()), "device": patient.devices[0], "dataClass": "phi",
                    "resource": observation("8867-4", 131.5)}
        publisher.publish(f"medplat/devices/{patient.devices[0]}/observation", json.dumps(envelope),
                          qos=1).wait_for_publish(5)
        cell = driver.find_element(By.CSS_SELECTOR, '[data-metric="HR"]')
        WebDriverWait(driver, 5, poll_frequency=0.02).until(lambda d: cell.text == "131.5")
        on_screen = time.time() - sent
    finally:
        publisher.loop_stop()
    assert on_screen < 1.0, on_screen
    driver.save_screenshot(str(stack["folder"] / "live-vital.png"))
    driver.find_element(By.CSS_SELECTOR, f"#alarm-{alarm.id} button").click()
    WebDriverWait(driver, 5).until(lambda d: "acknowledged by dr-ward-a" in d.find_element(By.ID, "alarms").text)
    assert alarm.state == "acknowledged"
    check_accessibility(stack, "alarm acknowledged")


def test_a_compliance_officer_drills_down_to_a_control(stack):
    driver = stack["driver"]
    sign_in(stack, "compliance-officer")
    driver.find_element(By.CSS_SELECTOR, 'a[href^="/compliance/"]').click()
    assert driver.find_element(By.ID, "verification").get_attribute("data-ok") == "true"
    check_accessibility(stack, "bundle")
    link = driver.find_element(By.CSS_SELECTOR, 'a[href*="/controls/"]')
    control = link.text
    link.click()
    assert driver.find_element(By.ID, "control-id").text.startswith(control)
    check_accessibility(stack, "control drill-down")


def test_a_clinician_claims_a_clinical_workflow_task_from_the_patient_page(stack):
    driver, app = stack["driver"], stack["app"]
    census = app.state.census
    patient = [p for p in census.patients.values() if p.ward == "ward-a"][-1]
    record_staff_observations(f"http://127.0.0.1:{stack['workflow'].port}", stack["settings"].data_dir,
                              stack["base"] + "/local-issuer", patient.reference)
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sdc-{uuid.uuid4().hex[:6]}")
    Mosquitto.login(publisher, "sdc-bridge")
    publisher.connect("127.0.0.1", stack["broker"].port)
    publisher.loop_start()
    try:  # NEWS2 7 (RR 3, SpO2 2, pulse 2): the workflow opens an emergency response Task
        publish_vitals(publisher, patient.devices[0], respiration_rate=26, spo2=93, systolic_bp=122, pulse=115,
                       temperature=36.9)
    finally:
        publisher.loop_stop()
    deadline = time.monotonic() + 30
    while not any(a.source == "clinical-workflow" for a in census.open_items(patient.id)):
        assert time.monotonic() < deadline, app.state.feeds.status
        time.sleep(0.2)
    task = next(a for a in census.open_items(patient.id) if a.source == "clinical-workflow")
    sign_in(stack, "dr-ward-a")
    driver.get(f"{stack['base']}/patient/{patient.id}")
    assert "NEWS2: 7" in driver.find_element(By.ID, "alarms-h").find_element(By.XPATH, "..").text
    check_accessibility(stack, "patient page with workflow task")
    driver.find_element(By.CSS_SELECTOR, f'[id="alarm-{task.id}"] button').click()
    WebDriverWait(driver, 10).until(
        lambda d: "claimed by Practitioner/dr-ward-a" in d.find_element(By.ID, "alarms").text)
    driver.save_screenshot(str(stack["folder"] / "task-claimed.png"))
    check_accessibility(stack, "task claimed")


def test_site_operations_and_compliance_drift_pages(stack):
    driver = stack["driver"]
    sign_in(stack, "site-operator")
    WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "table.checkpoints") or d.refresh())
    assert [row.find_elements(By.TAG_NAME, "td")[0].text for row in
            driver.find_elements(By.CSS_SELECTOR, "table.tuf tbody tr")] == ["root", "targets", "snapshot", "timestamp"]
    check_accessibility(stack, "site operations with checks")
    sign_in(stack, "compliance-officer")
    drift = driver.find_element(By.ID, "drift")
    assert "control NIS2-21.2.h: pass -> fail" in drift.text
    check_accessibility(stack, "compliance drift")


def test_a_ward_list_that_can_no_longer_refresh_says_so_and_a_refused_stream_says_not_live(stack):
    """The ward list refreshes every 5 s; a refused refresh (signed out in another tab, consent service
    down) left the old values on screen as if current. Now the table is marked stale with the time of its
    last refresh, and a live stream the portal refuses says the values are not live."""
    driver, app = stack["driver"], stack["app"]
    sign_in(stack, "dr-ward-a")
    patient = next(p for p in app.state.census.patients.values() if p.ward == "ward-a")
    driver.get(f"{stack['base']}/ward")
    status = driver.find_element(By.ID, "ward-status")
    WebDriverWait(driver, 8).until(lambda d: d.execute_script(
        "return performance.getEntriesByType('resource').some(e => e.name.endsWith('/ward'))"))  # a refresh went well
    assert status.text == "" and "stale" not in driver.find_element(By.TAG_NAME, "table").get_attribute("class")
    sign_out_elsewhere = ("return fetch('/logout', {method: 'POST', headers: JSON.parse("
                          "document.body.getAttribute('hx-headers'))}).then(r => r.status);")
    assert driver.execute_script(sign_out_elsewhere) == 204
    WebDriverWait(driver, 8).until(lambda d: "Not updated since" in status.text)
    assert "signed out" in status.text
    assert "stale" in driver.find_element(By.TAG_NAME, "table").get_attribute("class")
    check_accessibility(stack, "ward not updated")
    driver.get(f"{stack['base']}/")  # a patient page kept open while its session ends
    sign_in(stack, "dr-ward-a")
    driver.get(f"{stack['base']}/patient/{patient.id}")
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "stream-status").text == "live")
    assert driver.execute_script(sign_out_elsewhere) == 204
    WebDriverWait(driver, 15).until(lambda d: "Not live" in d.find_element(By.ID, "stream-status").text)
    check_accessibility(stack, "patient not live")
