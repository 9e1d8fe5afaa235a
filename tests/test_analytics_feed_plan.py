"""The analytics feed as planned by the components: a hardened CronJob in the EU PHI zone whose
flow annotations declare it the anonymizer that reaches the de-identified bucket, and the only
workload there that may; the residency proof passes on the shipped stack."""
from __future__ import annotations

from conftest import of_type
from medplat.components.workload_spec import spec_from_text
from medplat.policies.registry import by_id
from medplat.policycheck import run_pack

import pytest


def test_feed_is_a_hardened_cronjob_in_the_eu_zone(inventories):
    eu = inventories["eu-phi"]
    (cron,) = [r for r in of_type(eu, "kubernetes:batch/v1:CronJob") if r["name"].endswith("analytics-feed-cron")]
    spec = cron["inputs"]["spec"]
    assert spec["concurrencyPolicy"] == "Forbid" and spec["schedule"] == "17 2 * * *"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] and pod["automountServiceAccountToken"] is False
    assert "livenessProbe" not in container and pod["restartPolicy"] == "Never"
    notes = cron["inputs"]["metadata"]["annotations"]
    assert notes["medplat.io/roles"] == "anonymizer" and notes["medplat.io/writes"] == "deidentified"
    assert "@analytics-bucket" in notes["medplat.io/egress"]
    assert "@analytics-bucket=analytics" in notes["medplat.io/egress-zones"]
    assert not [r for r in of_type(eu, "kubernetes:apps/v1:Deployment") if "analytics-feed" in r["name"]]
    others = [r for r in of_type(eu, "kubernetes:apps/v1:Deployment")
              if "@analytics-bucket" in r["inputs"]["metadata"].get("annotations", {}).get("medplat.io/egress", "")]
    assert others == [], "no other EU workload reaches the bucket"


def test_residency_proof_passes_with_the_feed(inventories):
    assert run_pack(inventories["eu-phi"], [by_id()["dataflow-residency"]]) == []


def test_a_serving_workload_still_needs_its_health_check():
    with pytest.raises(ValueError, match="health: required"):
        spec_from_text("name: x\ndescription: a service without health\nimage: r/x@sha256:" + "a" * 64 +
                       "\nzones: [eu-phi]\nports: [{name: http, port: 8080}]\nresources: {requests: {cpu: 1m, "
                       "memory: 1Mi}, limits: {cpu: 1m, memory: 1Mi}}\ndataClasses: {}\n", None)


ARROW_TO_ATHENA = {"string": "string", "double": "double", "timestamp[ms, tz=UTC]": "timestamp"}


def test_glue_tables_describe_what_the_feed_writes(inventories):
    from medplat.workloads.analytics_feed.feed import OBSERVATIONS, PATIENTS
    analytics = inventories["analytics"]
    tables = {r["inputs"]["name"]: r["inputs"] for r in of_type(analytics, "aws:glue/catalogTable:CatalogTable")}
    for name, schema in (("observations", OBSERVATIONS), ("patients", PATIENTS)):
        columns = [(c["name"], c["type"]) for c in tables[name]["storageDescriptor"]["columns"]]
        assert columns == [(f.name, ARROW_TO_ATHENA[str(f.type)]) for f in schema]
        assert tables[name]["storageDescriptor"]["location"].endswith(f"/telemetry/{name}/")
    # The feed writes observations/day=YYYY-MM-DD/…: the projected partition Athena reads.
    assert [k["name"] for k in tables["observations"]["partitionKeys"]] == ["day"]
    assert tables["observations"]["parameters"]["projection.day.format"] == "yyyy-MM-dd"
