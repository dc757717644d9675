"""The playground in a real browser: headless Chromium (Debian's, through its chromedriver) driven by
selenium against the session's service. Skipped where chromium is not installed (scripts/setup.sh
installs it when it runs as root). The screenshot taken after the syntheses goes to the test's
temporary directory, or to `$PLAYGROUND_SCREENSHOT_DIR` when set; its path is printed."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.serve_app.http_helpers import delete_quietly, unique_id, wav_bytes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="chromium and chromium-driver are not installed (scripts/setup.sh as root)")
WORDS = ("Speaking while the text is still being typed, one word after another, "
         "until the sentence is finally complete.").split(" ")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1200",
                     "--autoplay-policy=no-user-gesture-required", "--use-fake-ui-for-media-stream"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(condition: Callable[[], Any], timeout: float = 120.0, what: str = "the page") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def console_errors(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_playground_registers_speaks_streams_live_and_runs_tasks(browser, serve_cluster, client, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    def element(element_id: str):
        return browser.find_element(By.ID, element_id)

    def script(source: str) -> Any:
        return browser.execute_script(source)

    browser.get(serve_cluster["base_url"] + "/playground")  # redirected to /playground/
    wait_for(lambda: element("status").text == "Ready", what="the playground to load")
    assert console_errors(browser) == []
    health = client.get("/health").json()
    assert element("service").text == f"{health['model']} · {health['status']}"

    # Register a voice from a file input.
    voice_id = unique_id("pg")
    sample = tmp_path / "sample.wav"
    sample.write_bytes(wav_bytes(2.5))
    element("register").find_element(By.TAG_NAME, "summary").click()
    form = element("register-form")
    form.find_element(By.NAME, "voice_id").send_keys(voice_id)
    form.find_element(By.NAME, "name").send_keys("Playground voice")
    form.find_element(By.NAME, "prompt_text").send_keys("Hello, this is a sample of my voice.")
    element("voice-file").send_keys(str(sample))
    element("register-submit").click()
    wait_for(lambda: voice_id in (script("return window.playground.voices") or []), what="the new voice")
    assert client.get(f"/api/v1/voices/{voice_id}").status_code == 200
    try:
        # Synthesize with it: the page plays what it decoded, as long as the API says the file is.
        assert Select(element("voice")).first_selected_option.text == voice_id
        Select(element("mode")).select_by_value("zero-shot")
        element("seed").send_keys("7")
        element("synthesize").click()
        playback = wait_for(lambda: script("return window.playground.playback && window.playground.playback.ended"
                                           " && window.playground.playback"), what="the audio to play through")
        assert playback["decodedDuration"] == pytest.approx(playback["apiDuration"], abs=0.005)
        assert playback["apiDuration"] > 0.5

        # Streamed over HTTP, heard while it is made.
        element("stream").click()
        streamed = wait_for(lambda: script("return window.playground.playback && window.playground.playback.streamed"
                                           " && window.playground.playback"), what="the streamed audio")
        assert streamed["decodedDuration"] == pytest.approx(playback["apiDuration"], abs=0.005)

        # An async task, listed until done, with its result to download.
        element("submit-task").click()
        wait_for(lambda: "completed" in element("tasks").text and element("tasks").find_elements(By.TAG_NAME, "button"),
                 what="the task to complete")

        # Live over the WebSocket: audio arrives while the text is still being typed.
        Select(element("mode")).select_by_value("sft")
        Select(element("voice")).select_by_value("pretrained_voice_001")
        element("live-start").click()
        wait_for(lambda: element("live-state").text.startswith("connected"), what="the WebSocket")
        typed = 0
        for word in WORDS:
            element("live-text").send_keys(word + " ")
            typed += 1
            if script("return window.playground.live.firstAudioAt"):
                break
            time.sleep(0.3)
        assert typed < len(WORDS), "no audio before the whole text was typed"
        element("live-text").send_keys(" ".join(WORDS[typed:]))
        element("live-end").click()
        wait_for(lambda: "done" in element("live-state").text, what="the live utterance to finish")
        assert element("caption").text.strip()

        screenshot_dir = Path(os.environ.get("PLAYGROUND_SCREENSHOT_DIR") or tmp_path)
        screenshot_dir.mkdir(parents=True, exist_ok=True)
        screenshot = screenshot_dir / "playground.png"
        browser.save_screenshot(str(screenshot))
        print(f"playground screenshot: {screenshot}")
        assert console_errors(browser) == []
    finally:
        delete_quietly(client, voice_id)
