"""On plain-HTTP loopback every other port of the host is the same site as the console: its
pages' requests carry the Strict cookies, and its server can set them. A page on another
port planted its own visitor nonce and posted the sign-in form's token for it (which it got
from the console itself), signing the agent in with its key in Chromium; the POST's Fetch
Metadata says where it came from. Through Starlette's TestClient against test_app's
stand-in."""
from __future__ import annotations

from tests.unit.console.test_app import AGENT, RESPOND, client, csrf_of, gateway, sign_in

__all__ = ["client", "gateway"]  # the fixtures

SAME_SITE = {"sec-fetch-site": "same-site", "sec-fetch-mode": "navigate",
             "sec-fetch-dest": "document"}
SAME_ORIGIN = {**SAME_SITE, "sec-fetch-site": "same-origin"}


def test_a_sign_in_posted_from_another_port_is_refused(client):
    form = client.get("/signin")  # the nonce's cookie and its token, as the other page got them
    posted = client.post("/signin", data={"csrf": csrf_of(form.text), "key": AGENT},
                         headers=SAME_SITE, follow_redirects=False)
    assert posted.status_code == 403 and "kairos_console=" not in \
        posted.headers.get("set-cookie", "")
    done = client.post("/signin", data={"csrf": csrf_of(form.text), "key": AGENT},
                       headers=SAME_ORIGIN)
    assert done.status_code == 200 and done.url.path == "/"


def test_an_outcome_posted_from_another_port_is_refused(client, gateway):
    token = sign_in(client)
    posted = client.post("/customer/respond", data={**RESPOND, "csrf": token},
                         headers=SAME_SITE, follow_redirects=False)
    assert posted.status_code == 403 and gateway.responses == []
    client.post("/customer/respond", data={**RESPOND, "csrf": token}, headers=SAME_ORIGIN)
    assert len(gateway.responses) == 1
