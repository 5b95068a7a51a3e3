"""The page for people at / on a real fleet's front port (supervisord, Nginx,
two Whisper tiny.en workers that need an API key), driven by headless
Chromium: the page itself loads without the key and asks for it, then the JFK
recording uploaded through the page streams in with its times, the text is the API's
own answer, the SRT download holds it, a broken file shows the server's
reason, and the fleet panel lists both instances. Saves a screenshot as
reports/page.png (the README's picture is a copy of one)."""

from __future__ import annotations

import os

import pytest
import requests
from fleet_harness import whisper_fleet
from machine import REPO, require_tool
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from tests.speech import reference, word_error_rate

pytestmark = pytest.mark.fleet

# tiny.en on JFK (measured 0.0 through /v1); a loose bound, the exact
# equality with the API's answer below is the sharp check.
WER_BOUND = 0.15


KEY = "page-key-1"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    keys = root / "api-keys"
    keys.write_text(KEY + "\n")
    keys.chmod(0o600)
    with whisper_fleet(root, "tiny.en", {"env": {"ASR_API_KEY_FILE": str(keys)}}).running(2) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def browser():
    chromium, driver = require_tool("chromium"), require_tool("chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,860"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    try:
        yield browser
    finally:
        browser.quit()


def status_text(browser) -> str:
    return browser.find_element(By.ID, "status").text


def upload(browser, path) -> str:
    browser.find_element(By.ID, "file").send_keys(str(path))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 180).until(lambda b: status_text(b).startswith(("Done", "Refused", "Failed")))
    return status_text(browser)


def test_the_page_streams_a_transcript_with_times_and_offers_srt(fleet, browser, audio_dir):
    browser.get(fleet.url + "/")
    served = browser.find_element(By.ID, "served")
    WebDriverWait(browser, 30).until(lambda b: "needs an API key" in served.text)
    browser.find_element(By.ID, "key").send_keys(KEY, Keys.TAB)
    WebDriverWait(browser, 30).until(lambda b: "tiny.en" in served.text)
    WebDriverWait(browser, 30).until(
        lambda b: len(b.find_elements(By.CSS_SELECTOR, "#instances td.ok")) == 2)

    assert upload(browser, audio_dir / "jfk.flac").startswith("Done: 11.0 s of audio")
    texts = [span.text for span in browser.find_elements(By.CSS_SELECTOR, "#transcript li span")]
    assert texts
    page_text = " ".join(texts)
    with open(audio_dir / "jfk.flac", "rb") as handle:
        answer = requests.post(fleet.url + "/v1/audio/transcriptions", files={"file": handle},
                               data={"model": "whisper-1"}, headers={"Authorization": f"Bearer {KEY}"},
                               timeout=120).json()
    assert page_text == answer["text"]
    assert word_error_rate([reference("jfk")], [page_text]) <= WER_BOUND

    times = [time.text for time in browser.find_elements(By.CSS_SELECTOR, "#transcript time")]
    starts = [clock.split(" – ")[0] for clock in times]
    assert starts == sorted(starts) and starts[0].startswith("00:00")
    srt = browser.execute_async_script(
        "const done = arguments[0];"
        "fetch(document.getElementById('srt').href).then(r => r.text()).then(done);")
    assert srt.startswith("1\n00:00:00,") and " --> 00:00:" in srt
    lines = [line for line in srt.splitlines() if line and not line[0].isdigit()]
    assert max(map(len, lines)) <= 42 and " ".join(lines) == page_text

    os.makedirs(REPO / "reports", exist_ok=True)
    browser.save_screenshot(str(REPO / "reports" / "page.png"))


def test_a_broken_file_shows_the_servers_reason(fleet, browser, audio_dir):
    browser.get(fleet.url + "/")
    assert upload(browser, audio_dir / "edge" / "bad.wav").startswith("Refused 400: ")
    assert browser.find_element(By.ID, "status").get_attribute("class") == "error"
    assert not browser.find_elements(By.CSS_SELECTOR, "#transcript li")
