"""Keys through the pseudonymizer's key interface: the policy's patient domain renders
PatientID (so the pseudonymizer service, given the same store, yields the same pseudonyms),
and a project domain keys UID remapping and date shifts across batches."""
from __future__ import annotations

from pathlib import Path

from medplat.service.db import make_engine
from medplat.workloads.dicom_anonymizer.deid import Keys
from medplat.workloads.pseudonymizer.keys import LocalKeyFile
from medplat.workloads.pseudonymizer.service import PseudonymError, Pseudonymizer, migrate_store

PROJECT_DOMAIN = "dicom-project"


def open_store(folder: Path, passphrase: str | None = None) -> Pseudonymizer:
    folder.mkdir(parents=True, exist_ok=True)
    engine = make_engine(f"sqlite:///{(folder / 'pseudonymizer.sqlite').resolve()}")
    migrate_store(engine)
    return Pseudonymizer(engine, {"local": LocalKeyFile(folder / "keys.json", passphrase)})


def keys_for(store: Pseudonymizer, patient_domain: str) -> Keys:
    for domain in (PROJECT_DOMAIN, patient_domain):
        try:
            store.domain(domain)
        except PseudonymError:
            store.create_domain(domain, "pseudonymized", "local")
    return Keys(project=store.key(PROJECT_DOMAIN), patient=store.key(patient_domain))
