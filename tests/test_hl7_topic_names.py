"""hl7-retrofit: a sender or equipment name with MQTT topic characters still reaches the forwarder.

Found by a fresh-eyes test over MLLP with the real Mosquitto: the topic was
`medplat/devices/<MSH-3 or OBX-18>/oru` with the name unescaped, so MSH-3 `MON/ICU` (HD namespace
IDs are free text, HL7 v2.5.1 2A.33) published to `medplat/devices/MON/ICU/oru` — outside the
site ACL's `medplat/devices/+/oru`, where Mosquitto (MQTT 3.1.1) acknowledges and drops it, i.e.
AA for a lost message — and MSH-3 `EVIL#` made paho refuse the wildcard topic (AE 207, "internal
error"). MQTT 3.1.1 section 4.7: `/` separates levels, `+` and `#` are wildcards not allowed in a
topic name, NUL is forbidden. The envelope keeps the name as sent."""
from __future__ import annotations

import time

import pytest

from test_hl7_conformance import Sender, field, published, site  # noqa: F401 (site is a fixture)


def message(sender: str, control: str) -> bytes:
    return ("\r".join([
        f"MSH|^~\\&|{sender}|ICU|MEDPLAT|EDGE|20240315143000+0100||ORU^R01^ORU_R01|{control}|P|2.5.1|||AL|NE||"
        "UNICODE UTF-8", "PID|1||42^^^UKDD^MR", "OBR|1|||x^y^LN|||20240315120000+0100",
        "OBX|1|NM|8867-4^Heart rate^LN||72|/min^^UCUM|||||F"]) + "\r").encode()


@pytest.mark.slow
def test_sender_names_with_topic_characters_are_published_within_the_acl(site):  # noqa: F811
    port, received = site
    names = {"TOPIC-SLASH": "MON/ICU", "TOPIC-HASH": "EVIL#", "TOPIC-PLUS": "BED+1"}
    sender = Sender(port)
    for control, name in names.items():
        sender.send(message(name, control))
        reply = sender.reply()
        assert field(reply, "MSA", 1) == "AA", reply
    sender.close()
    envelopes = published(received, set(names))
    assert {e["device"] for e in envelopes} == set(names.values())
