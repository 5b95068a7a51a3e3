"""API keys at the fleet level: a key file named in the fleet file.

The key file reaches every worker as ASR_API_KEY_FILE through `[worker.env]`;
the workers check `Authorization: Bearer` before any work (app/auth.py says
why the check is in the worker rather than Nginx), and Nginx passes the
header through. /health stays open, so the poller keeps working.
"""

from __future__ import annotations

import pytest
import requests
from fleet_harness import CLIPS, Fleet

pytestmark = pytest.mark.fleet


@pytest.fixture(scope="module")
def keyed_fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("keyed-fleet")
    keys = root / "api-keys"
    keys.write_text("# one key per line\nfleet-key-1\n")
    keys.chmod(0o600)
    fleet = Fleet(root, weights=[1], active=1, min_instances=1,
                  tables={"worker": {"env": {"ASR_API_KEY_FILE": str(keys)}}})
    with fleet.running(1):
        yield fleet


def post(url, **headers):
    with open(CLIPS[0], "rb") as handle:
        return requests.post(url + "/asr", files={"file": handle}, headers=headers, timeout=120)


def test_requests_without_a_valid_key_get_401_through_nginx(keyed_fleet):
    response = post(keyed_fleet.url)
    assert response.status_code == 401
    assert response.json() == {"code": 401, "msg": "missing API key: send 'Authorization: Bearer <key>'"}
    assert post(keyed_fleet.url, Authorization="Bearer guess").status_code == 401


def test_a_valid_key_is_served_and_health_stays_open(keyed_fleet):
    response = post(keyed_fleet.url, Authorization="Bearer fleet-key-1")
    assert response.status_code == 200 and response.json()["text"]
    # The poller reads /health without a key: the instance settles as healthy.
    keyed_fleet.wait_settled(1)
    assert keyed_fleet.status()["healthy"] == 1
