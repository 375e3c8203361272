"""The operator page (/ui) in a real headless Chromium, driven by selenium, in front of the
proxy and two emulated models on one fake GPU, with an admin key configured.

The proxy runs under uvicorn in the test's event loop (tests/helpers/proxy_server.py), so every
blocking selenium call runs in a thread (`Browser.call`) while the loop serves the page's
requests. Every wait is a WebDriverWait on a condition of the page. Selenium talks to Debian's
/usr/bin/chromedriver through a Service, so Selenium Manager never looks for (or downloads) a
driver. With UI_SCREENSHOT=1 the test saves docs/img/ui.png (the screenshot in
docs/observability.md).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from tests.helpers.bodies import chat
from tests.helpers.fleet import Fleet, config_for
from tests.helpers.processes import required_tool
from tests.helpers.proxy_server import serve_proxy

pytestmark = pytest.mark.process

ADMIN = "sk-admin-ui-0123"
MODELS: list[dict[str, Any]] = [{"name": "model-a", "aliases": ["a"]}, {"name": "model-b"}]
HINT = "Debian's chromium and chromium-driver packages; .ci/run installs them"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "ui.png"
WAIT_S = 20
T = TypeVar("T")

# what the page shows, read in one call: {login, key_error, stream, ready, states, timeline,
# outcome, reloaded}
SNAPSHOT_JS = """
const q = (s) => Array.from(document.querySelectorAll(s));
const text = (id) => document.getElementById(id).textContent;
return {
  login: !document.getElementById("login").hidden,
  key_error: text("key-error"),
  stream: text("stream"),
  ready: text("ready"),
  states: Object.fromEntries(
    q("#model-rows tr").map((tr) => [tr.dataset.model, tr.querySelector(".badge").textContent])),
  aliases: q("#model-rows .aliases").map((d) => d.textContent),
  gpus: q("#gpu-rows tr").map((tr) => tr.dataset.gpu),
  timeline: q("#timeline li").map((li) => [li.dataset.type, li.querySelector(".text").textContent]),
  outcome: text("outcome"),
  reloaded: window.uiTestMarker !== 1,
};
"""


class Browser:
    """One headless Chromium on the page; its methods block (call them through `call`)."""

    def __init__(self, driver: WebDriver) -> None:
        self.driver = driver

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    def snapshot(self) -> dict[str, Any]:
        shot: dict[str, Any] = self.driver.execute_script(SNAPSHOT_JS)
        return shot

    def wait(self, what: str, cond: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first snapshot for which `cond` holds (fails after WAIT_S, with the last one)."""
        last: list[dict[str, Any]] = []

        def check(_: WebDriver) -> dict[str, Any] | Literal[False]:
            shot = self.snapshot()
            last[:] = [shot]
            return shot if cond(shot) else False

        try:
            result: dict[str, Any] = WebDriverWait(self.driver, WAIT_S, poll_frequency=0.05).until(
                check
            )
        except Exception as exc:
            raise AssertionError(f"the page never showed {what}; it shows {last}") from exc
        return result

    def open(self, url: str) -> None:
        self.driver.get(url)
        self.driver.execute_script("window.uiTestMarker = 1")  # gone if the page reloads

    def enter_key(self, key: str) -> None:
        field = self.driver.find_element(By.ID, "key")
        field.clear()
        field.send_keys(key)
        self.driver.find_element(By.ID, "key-submit").click()

    def click(self, model: str, action: str) -> None:
        selector = f'tr[data-model="{model}"] button[data-action="{action}"]'
        button = self.driver.find_element(By.CSS_SELECTOR, selector)
        assert button.is_displayed(), f"{action} is not offered for {model}"
        assert button.is_enabled(), f"{action} is disabled for {model}"
        button.click()

    def errors(self) -> list[str]:
        """Console messages of script errors and CSP violations."""
        logs: list[dict[str, Any]] = self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        return [
            e["message"]
            for e in logs
            if "Content Security Policy" in e["message"] or "Uncaught" in e["message"]
        ]


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    binary = required_tool("chromium", HINT)
    driver_path = required_tool("chromedriver", HINT)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(driver_path)
    driver = await asyncio.to_thread(webdriver.Chrome, service=service, options=options)
    try:
        yield Browser(driver)
    finally:
        await asyncio.to_thread(driver.quit)


def has_entry(shot: dict[str, Any], kind: str, text: str) -> bool:
    return any(t == kind and text in line for t, line in shot["timeline"])


async def test_the_page_asks_for_the_key_and_follows_switches_live(fleet: Fleet) -> None:
    fleet.start(("model-a", []), ("model-b", []))  # the last one stays awake
    config = config_for(fleet, MODELS, auth={"admin_keys": [ADMIN]})
    async with (
        serve_proxy(config) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=30) as client,
        chromium() as page,
    ):
        await page.call(page.open, f"{proxy.url}/ui")
        shot = await page.call(page.wait, "the key form", lambda s: s["login"])
        assert shot["states"] == {}, "nothing of /admin/status without the key"

        await page.call(page.enter_key, "sk-wrong-0123")
        shot = await page.call(page.wait, "a refused key", lambda s: "refused" in s["key_error"])
        assert shot["login"]
        assert shot["states"] == {}

        await page.call(page.enter_key, ADMIN)
        shot = await page.call(
            page.wait,
            "both models, b awake, and a live stream",
            lambda s: (
                s["states"] == {"model-a": "asleep", "model-b": "ready"}
                and s["stream"] == "stream: live"
            ),
        )
        assert not shot["login"]
        assert shot["ready"] == "ready"
        assert shot["gpus"] == ["g0"]
        assert shot["aliases"] == ["aka a", ""]
        assert has_entry(shot, "state", "model-b: unknown -> ready"), "replayed start-up events"
        assert not has_entry(shot, "switch", ""), "no switch yet"
        url = await page.call(lambda: page.driver.current_url)
        assert url == f"{proxy.url}/ui", "the key is never in the URL"
        stored = await page.call(
            page.driver.execute_script, "return sessionStorage.getItem('vllm-switch.admin-key')"
        )
        assert stored == ADMIN

        # a client's request for the sleeping model: the page follows without a reload
        r = await client.post("/v1/chat/completions", json=chat("model-a"))
        assert r.status_code == 200, r.text
        shot = await page.call(
            page.wait,
            "the switch to model-a",
            lambda s: (
                has_entry(s, "switch", "g0: model-b -> model-a in ")
                and s["states"] == {"model-a": "ready", "model-b": "asleep"}
            ),
        )
        assert has_entry(shot, "state", "model-a: waking -> ready")
        assert has_entry(shot, "state", "model-b: sleeping -> asleep")
        assert shot["timeline"][0][0] in ("state", "switch"), "newest first"
        assert not shot["reloaded"]

        # the operator's buttons: Sleep the awake model, then Wake the other
        await page.call(page.click, "model-a", "sleep")
        shot = await page.call(
            page.wait,
            "model-a asleep after its Sleep button",
            lambda s: (
                s["states"] == {"model-a": "asleep", "model-b": "asleep"}
                and s["outcome"].startswith("sleep model-a: put to sleep")
            ),
        )
        assert has_entry(shot, "operator", "sleep model-a: put to sleep")
        assert proxy.state("model-a") == "asleep"

        await page.call(page.click, "model-b", "wake")
        shot = await page.call(
            page.wait,
            "model-b ready after its Wake button",
            lambda s: (
                s["states"] == {"model-a": "asleep", "model-b": "ready"}
                and s["outcome"].startswith("wake model-b: woken")
            ),
        )
        assert has_entry(shot, "operator", "wake model-b: woken")
        assert proxy.state("model-b") == "ready"
        assert not shot["reloaded"]
        if os.environ.get("UI_SCREENSHOT") == "1":
            await page.call(page.driver.save_screenshot, str(SCREENSHOT))

        # a refused action shows the proxy's error message (an attached model has no Restart
        # button, so the page's own action function is called)
        await page.call(page.driver.execute_script, "act('model-a', 'restart')")
        shot = await page.call(
            page.wait, "the 409 of a refused restart", lambda s: "refused (409" in s["outcome"]
        )
        assert "attached" in shot["outcome"]
        assert await page.call(page.errors) == []
