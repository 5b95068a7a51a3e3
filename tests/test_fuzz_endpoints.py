"""Fuzzing the upload endpoints with hypothesis.

Random and broken uploads, odd field names, form values and content types,
and hand-written multipart bodies (tests/fuzzing.py) sent to /asr,
/asr_simple and /v1/audio/transcriptions: every answer is below 500, echoes
the request's X-Request-ID, and a refusal has a one-line reason; no file is
left in the temp folder. The default run goes through Flask's test client,
bounded and derandomized; `make fuzz` runs the `fuzz_long` tests, random and
many times larger, also against a real Gunicorn worker that must still be
the same healthy process at the end.
"""

from __future__ import annotations

import io
import itertools

import psutil
import pytest
import requests
from fuzzing import (
    ANY_UPLOAD,
    BOUNDED,
    CONTENT_TYPES,
    ENDPOINTS,
    FIELD_NAMES,
    FORM,
    LONG,
    MAX_REASON_CHARS,
    raw_multipart,
)
from hypothesis import event, given
from hypothesis import strategies as st

pytestmark = pytest.mark.worker


def check_response(response, request_id: str) -> None:
    event(f"status {response.status_code}")  # the spread shows with --hypothesis-show-statistics
    assert response.status_code < 500, (response.status_code, response.get_data()[:300])
    assert response.headers["X-Request-ID"] == request_id
    if response.status_code >= 400:
        body = response.get_json()
        message = body["error"]["message"] if "error" in body else body["msg"]
        assert message and "\n" not in message and len(message) <= MAX_REASON_CHARS


_count = itertools.count()


@BOUNDED
@given(endpoint=st.sampled_from(ENDPOINTS), field=FIELD_NAMES, filename=st.text(max_size=30),
       content=ANY_UPLOAD, form=FORM)
def test_endpoints_with_random_uploads_and_fields(private_tmp, client, endpoint, field, filename,
                                                  content, form):
    request_id = f"fuzz-{next(_count)}"
    data = {**form, field: (io.BytesIO(content), filename or "upload")}
    response = client.post(endpoint, data=data, headers={"X-Request-ID": request_id})
    check_response(response, request_id)


@BOUNDED
@given(endpoint=st.sampled_from(ENDPOINTS), content_type=CONTENT_TYPES,
       body=st.one_of(raw_multipart(), st.binary(max_size=2048)))
def test_endpoints_with_raw_bodies(private_tmp, client, endpoint, content_type, body):
    request_id = f"fuzz-{next(_count)}"
    if body.startswith(b"--XyZ"):
        content_type = "multipart/form-data; boundary=XyZ"
    response = client.post(endpoint, data=body, headers={"X-Request-ID": request_id,
                                                         "Content-Type": content_type})
    check_response(response, request_id)


@pytest.mark.fuzz_long
@LONG
@given(endpoint=st.sampled_from(ENDPOINTS), field=FIELD_NAMES, filename=st.text(max_size=30),
       content=ANY_UPLOAD, form=FORM, raw=st.none() | raw_multipart())
def test_endpoints_long(private_tmp, client, endpoint, field, filename, content, form, raw):
    request_id = f"fuzz-{next(_count)}"
    if raw is None:
        data = {**form, field: (io.BytesIO(content), filename or "upload")}
        response = client.post(endpoint, data=data, headers={"X-Request-ID": request_id})
    else:
        response = client.post(endpoint, data=raw, headers={
            "X-Request-ID": request_id, "Content-Type": "multipart/form-data; boundary=XyZ"})
    check_response(response, request_id)


# -- the long run against a real Gunicorn worker ------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_worker(module_worker):
    worker = module_worker(private_tmp=True, ASR_ENGINE="pocketsphinx", ASR_INSTANCE_NAME="fuzz",
                           ASR_MAX_AUDIO_SECONDS="600")
    return worker, worker.serving_pid(), worker.tmpdir


@pytest.mark.fuzz_long
def test_real_worker_survives_fuzzing(fuzz_worker):
    worker, pid, tmpdir = fuzz_worker
    session = requests.Session()

    @LONG
    @given(endpoint=st.sampled_from(ENDPOINTS), field=FIELD_NAMES, content=ANY_UPLOAD, form=FORM,
           raw=st.none() | raw_multipart())
    def fuzz(endpoint, field, content, form, raw):
        request_id = f"fuzz-{next(_count)}"
        headers = {"X-Request-ID": request_id}
        if raw is None:
            response = session.post(worker.url + endpoint, files={field: ("upload", content)},
                                    data=form, headers=headers, timeout=60)
        else:
            headers["Content-Type"] = "multipart/form-data; boundary=XyZ"
            response = session.post(worker.url + endpoint, data=raw, headers=headers, timeout=60)
        assert response.status_code < 500, (response.status_code, response.text[:300])
        assert response.headers["X-Request-ID"] == request_id

    fuzz()
    assert requests.get(worker.url + "/health", timeout=5).status_code == 200
    (child,) = psutil.Process(worker.process.pid).children()
    assert child.pid == pid, "the worker process was replaced: it crashed"
    assert list(tmpdir.iterdir()) == []
    assert "Traceback" not in worker.log_path.read_text(errors="replace")
