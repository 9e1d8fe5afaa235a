"""One MQTT client construction in the platform: `medplat.service.mqtt.make_client` (broker URL,
per-workload credentials, TLS for mqtts://). A workload that built its own paho client could skip
the credentials or TLS; this walks the source of the foundation and every workload."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOUNDATION_CLIENT = REPO / "src/medplat/service/mqtt.py"


def paho_client_constructions(path: Path) -> list[int]:
    """Line numbers where `paho.mqtt.client.Client(...)` is called, however it was imported."""
    tree = ast.parse(path.read_text())
    module_aliases, class_aliases = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            module_aliases |= {a.asname or a.name for a in node.names if a.name == "paho.mqtt.client"}
        elif isinstance(node, ast.ImportFrom) and node.module == "paho.mqtt.client":
            class_aliases |= {a.asname or a.name for a in node.names if a.name == "Client"}
        elif isinstance(node, ast.ImportFrom) and node.module == "paho.mqtt":
            module_aliases |= {a.asname or a.name for a in node.names if a.name == "client"}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in class_aliases:
            found.append(node.lineno)
        elif isinstance(func, ast.Attribute) and func.attr == "Client":
            base = ast.unparse(func.value)
            if base in module_aliases or base == "paho.mqtt.client":
                found.append(node.lineno)
    return found


def test_only_the_foundation_constructs_an_mqtt_client():
    sources = [*(REPO / "src").rglob("*.py"), *(REPO / "workloads").rglob("*.py"), *(REPO / "components").rglob("*.py")]
    constructions = {str(p.relative_to(REPO)): lines for p in sources if (lines := paho_client_constructions(p))}
    assert set(constructions) == {str(FOUNDATION_CLIENT.relative_to(REPO))}, constructions


def test_the_walk_recognises_a_client_construction(tmp_path):
    """The check above would see a workload's own client, whatever the import style."""
    samples = {"a.py": "import paho.mqtt.client as mqtt\nc = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)\n",
               "b.py": "from paho.mqtt.client import Client as C\nc = C()\n",
               "c.py": "from paho.mqtt import client\nc = client.Client()\n",
               "d.py": "import paho.mqtt.client as mqtt\nrc = mqtt.MQTT_ERR_SUCCESS\n"}
    for name, text in samples.items():
        (tmp_path / name).write_text(text)
    assert {name: bool(paho_client_constructions(tmp_path / name)) for name in samples} == {
        "a.py": True, "b.py": True, "c.py": True, "d.py": False}
