"""``/docs`` and ``/redoc`` without a network, in a real headless Chromium against the real
local stack: every script and style comes from the gateway (anything else is refused by the
pages' CSP), Swagger UI's "Authorize" takes an API key and "Try it out" on ``GET /v1/models``
answers 200."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.integration.conftest import API_KEY

pytestmark = pytest.mark.integration


@pytest.fixture
def offline(browser) -> Iterator[None]:
    """Requests to the CDNs FastAPI's default pages use fail at once, as on a machine without
    a network."""
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd(
        "Network.setBlockedURLs",
        {"urls": ["*cdn.jsdelivr.net*", "*unpkg.com*", "*fonts.googleapis.com*"]},
    )
    try:
        yield
    finally:
        browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
        browser.execute_cdp_cmd("Network.disable", {})


def wait(driver, until, timeout: float = 60):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(until)


def assert_only_own_files(driver, base_url: str) -> list[str]:
    """Every resource the page loaded came from the gateway: one it asked of another host
    (ReDoc's sidebar logo) got nothing, refused by the page's CSP."""
    entries = driver.execute_script(
        "return performance.getEntriesByType('resource')"
        ".map(e => [e.name, e.responseStatus, e.transferSize])"
    )
    origin = urlsplit(base_url).netloc
    foreign = [e for e in entries if urlsplit(e[0]).netloc != origin and e[1:] != [0, 0]]
    assert foreign == [], foreign
    return [e[0] for e in entries]


def test_swagger_ui_offline_authorize_and_try_it_out(browser, base_url, offline, screenshot):
    browser.get(f"{base_url}/docs")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock"))
    loaded = assert_only_own_files(browser, base_url)
    assert any(u.endswith("/docs-assets/swagger-ui-bundle.js") for u in loaded)
    assert browser.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text.startswith(
        "genmedia"
    )

    browser.find_element(By.CSS_SELECTOR, ".swagger-ui button.authorize").click()
    modal = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".modal-ux"))[0]
    assert "APIKey" in modal.text and "Bearer" in modal.text
    modal.find_element(By.CSS_SELECTOR, "input").send_keys(API_KEY)
    modal.find_element(By.CSS_SELECTOR, ".auth-btn-wrapper button.authorize").click()
    wait(browser, lambda d: modal.find_elements(By.CSS_SELECTOR, "button.btn-done"))
    screenshot("docs-01-authorized")
    modal.find_element(By.CSS_SELECTOR, "button.btn-done").click()

    op = browser.find_element(By.ID, "operations-models-list_models_v1_models_get")
    op.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
    wait(browser, lambda d: op.find_elements(By.CSS_SELECTOR, "button.try-out__btn"))
    op.find_element(By.CSS_SELECTOR, "button.try-out__btn").click()
    wait(browser, lambda d: op.find_elements(By.CSS_SELECTOR, "button.execute"))
    op.find_element(By.CSS_SELECTOR, "button.execute").click()
    live = ".live-responses-table tbody"
    status = wait(
        browser, lambda d: op.find_elements(By.CSS_SELECTOR, f"{live} .response-col_status")
    )[0]
    assert status.text.strip().startswith("200"), status.text
    body = op.find_element(By.CSS_SELECTOR, f"{live} .response-col_description")
    assert "sd15-tiny" in body.text
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", op)
    screenshot("docs-02-try-it-out")


def test_redoc_offline(browser, base_url, offline, screenshot):
    browser.get(f"{base_url}/redoc")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-section-id]")) > 10)
    loaded = assert_only_own_files(browser, base_url)
    assert any(u.endswith("/docs-assets/redoc.standalone.js") for u in loaded)
    assert "/v1/queue/models/{model_id}" in browser.page_source
    screenshot("docs-03-redoc")
