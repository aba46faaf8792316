"""The browser playground (``/playground``) in a real headless Chromium against the real local
stack: an image with its progress and result, a cancelled long job, an error shown next to its
field, a 401 hint, an image-to-image upload, and a video and an audio result that load in their
elements. Each state is saved as a screenshot (``screenshots_dir``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.integration.conftest import API_KEY

pytestmark = pytest.mark.integration

JOB_TIMEOUT_S = 120  # a shared, loaded 2-core machine: generous, never a timing assertion


def by_id(driver, testid: str):
    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def wait(driver, until: Callable[[Any], Any], timeout: float = JOB_TIMEOUT_S):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(until)


def open_playground(driver, base_url: str, key: str = API_KEY, model: str = "sd15-tiny"):
    driver.get(f"{base_url}/playground")
    driver.execute_script("sessionStorage.clear()")
    driver.get(f"{base_url}/playground")
    wait(driver, lambda d: d.execute_script("return document.body.dataset.ready === 'true'"), 30)
    field = by_id(driver, "api-key")
    field.send_keys(key, Keys.ENTER)
    if key != API_KEY:
        return
    wait(driver, lambda d: by_id(d, "model-select").is_enabled(), 30)
    Select(by_id(driver, "model-select")).select_by_value(model)
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="field-seed"]'), 10)


def fill(driver, **fields: object) -> None:
    for name, value in fields.items():
        el = by_id(driver, f"field-{name}")
        el.clear()
        el.send_keys(str(value))


def wait_status(driver, *statuses: str, timeout: float = JOB_TIMEOUT_S) -> str:
    def done(d):
        status = by_id(d, "progress").get_attribute("data-status")
        return status if status in statuses else None

    return wait(driver, done, timeout)


def media_state(driver, tag: str) -> dict:
    return driver.execute_script(
        "const m = document.querySelector(`[data-testid=result] ${arguments[0]}`);"
        "return m && {ready: m.readyState, duration: m.duration, error: m.error && m.error.code,"
        " src: m.currentSrc};",
        tag,
    )


def test_generate_image_progress_result_history(browser, base_url, screenshot):
    open_playground(browser, base_url)
    fill(browser, num_inference_steps=8, seed=7)
    by_id(browser, "prompt").clear()
    by_id(browser, "prompt").send_keys("a red fox in the snow")
    screenshot("01-form")
    by_id(browser, "prompt").send_keys(Keys.CONTROL, Keys.ENTER)  # the keyboard way to submit
    assert wait_status(browser, "COMPLETED", "FAILED", "ERROR") == "COMPLETED"
    wait(
        browser,
        lambda d: d.execute_script(
            "const i = document.querySelector('[data-testid=result] img');"
            "return i && i.complete && i.naturalWidth === 64;"
        ),
        30,
    )
    progress = by_id(browser, "progress")
    assert progress.get_attribute("value") == progress.get_attribute("max")
    if progress.get_attribute("data-step") is not None:  # a step event came before the end
        assert progress.get_attribute("max") == "8"
    result = by_id(browser, "result").text
    assert "seed 7" in result and "sd15-tiny" in result and "num_inference_steps" in result
    assert "compute" in result and "total" in result  # timings
    assert by_id(browser, "error").is_displayed() is False
    assert not by_id(browser, "cancel").is_enabled()
    history = by_id(browser, "history").text
    assert "COMPLETED" in history and "sd15-tiny" in history
    # the key stays in this tab's sessionStorage, nowhere else; snippets never carry it
    assert browser.execute_script("return sessionStorage.getItem('genmedia.apiKey')") == API_KEY
    assert browser.execute_script("return localStorage.length") == 0
    snippet = by_id(browser, "snippet").text
    assert '"seed":7' in snippet and "/v1/queue/models/sd15-tiny" in snippet
    assert API_KEY not in snippet
    by_id(browser, "snippet-openai").click()
    snippet = by_id(browser, "snippet").text
    assert "client.images.generate(" in snippet and '"seed": 7' in snippet
    browser.execute_script("window.scrollTo(0, 0)")
    screenshot("02-result")


def test_cancel_a_long_job(browser, base_url, screenshot):
    open_playground(browser, base_url)
    fill(browser, num_inference_steps=50, width=256, height=256, num_images=4)
    Select(by_id(browser, "field-priority")).select_by_value("batch")
    by_id(browser, "generate").click()

    def running(d):
        p = by_id(d, "progress")
        step = p.get_attribute("data-step")
        return p.get_attribute("data-status") == "IN_PROGRESS" and step and int(step) >= 1

    wait(browser, running)
    assert by_id(browser, "cancel").is_enabled()
    screenshot("03-running")
    by_id(browser, "cancel").click()
    assert wait_status(browser, "CANCELLED", "COMPLETED", "FAILED") == "CANCELLED"
    assert by_id(browser, "status").text == "Cancelled"
    assert by_id(browser, "result").text == ""
    assert "CANCELLED" in by_id(browser, "history").text
    assert by_id(browser, "generate").is_enabled()
    screenshot("04-cancelled")


def test_field_error_is_shown_next_to_its_field(browser, base_url, screenshot):
    open_playground(browser, base_url)
    fill(browser, width=13)
    by_id(browser, "generate").click()
    err = wait(
        browser,
        lambda d: by_id(d, "error-width") if by_id(d, "error-width").is_displayed() else None,
        30,
    )
    assert "32" in err.text and "multiple of 8" in err.text
    width = by_id(browser, "field-width")
    assert width.get_attribute("aria-invalid") == "true"
    assert browser.switch_to.active_element == width  # focus goes to the field at fault
    # the message sits in the same field box as the input
    box = width.find_element(By.XPATH, "./ancestor::div[@data-field='width']")
    assert box.find_element(By.CSS_SELECTOR, ".field-error") == err
    assert "invalid_request (422)" in by_id(browser, "error").text
    assert not by_id(browser, "error-height").is_displayed()
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", width)
    screenshot("05-field-error")


def test_bad_key_answers_401_with_a_hint(browser, base_url, screenshot):
    open_playground(browser, base_url, key="gm_00000000_" + "x" * 43)
    err = wait(
        browser,
        lambda d: by_id(d, "error-api-key") if by_id(d, "error-api-key").is_displayed() else None,
        30,
    )
    assert "refused" in err.text
    box = by_id(browser, "error").text
    assert "unauthorized (401)" in box and "make serve" in box
    assert not by_id(browser, "model-select").is_enabled()
    screenshot("06-unauthorized")


def test_image_to_image_upload(browser, base_url, screenshot, tmp_path):
    open_playground(browser, base_url)
    path = tmp_path / "input.png"
    Image.new("RGB", (64, 48), (200, 40, 40)).save(path)
    by_id(browser, "field-image").send_keys(str(path))
    wait(browser, lambda d: "uploaded" in by_id(d, "upload-image").text, 30)
    fill(browser, num_inference_steps=4, strength=0.5)
    by_id(browser, "generate").click()
    assert wait_status(browser, "COMPLETED", "FAILED", "ERROR") == "COMPLETED"
    wait(
        browser,
        lambda d: d.execute_script(
            "const i = document.querySelector('[data-testid=result] img');"
            "return i && i.complete && i.naturalWidth === 64 && i.naturalHeight === 48;"
        ),
        30,
    )
    assert "image-to-image" in by_id(browser, "result").text
    screenshot("07-image-to-image")


@pytest.mark.parametrize(
    ("model", "tag", "fields"),
    [
        ("wan-tiny", "video", {"num_frames": 9, "fps": 8, "width": 64, "height": 48}),
        ("stable-audio-tiny", "audio", {"duration_s": 1.5}),
    ],
)
def test_video_and_audio_results_play(browser, base_url, screenshot, model, tag, fields):
    open_playground(browser, base_url, model=model)
    fill(browser, num_inference_steps=2, **fields)
    by_id(browser, "generate").click()
    assert wait_status(browser, "COMPLETED", "FAILED", "ERROR") == "COMPLETED"

    def loaded(d) -> dict | None:
        state = media_state(d, tag)
        return state if state and state["ready"] >= 1 else None  # HAVE_METADATA or more

    state = wait(browser, loaded, 30)
    assert state["error"] is None and state["src"].startswith("blob:")
    assert state["duration"] > 0
    assert by_id(browser, "result").get_attribute("data-kind") == tag
    screenshot(f"08-{tag}")


def test_readable_at_phone_width(browser, base_url, screenshot):
    open_playground(browser, base_url)
    size = browser.get_window_size()
    browser.set_window_size(390, 844)
    try:
        wait(browser, lambda d: d.execute_script("return innerWidth") <= 420, 10)
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{overflow}px wider than the screen"
        screenshot("09-phone")
    finally:
        browser.set_window_size(size["width"], size["height"])


def test_index_links_the_playground(browser, base_url):
    browser.get(f"{base_url}/")
    link = browser.find_element(By.LINK_TEXT, "playground")
    link.click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="api-key"]'), 30)
