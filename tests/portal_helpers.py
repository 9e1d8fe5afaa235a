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
