"""The dashboard at /ui in a real browser: Debian's chromium, headless, driven by Selenium
through Debian's chromedriver, against a real gateway (uvicorn) with two real backends: the
embedded engine and llama-cpp-python's server, both on the Gemma 3 270M GGUF.

Logs in with the admin key (a wrong one first), checks the session cookie (HttpOnly,
SameSite=Strict), sees both backends up, loads a model from the Models page and watches its
state, streams a chat from the Playground through the OpenAI, Anthropic and Ollama fronts, finds
the requests in the log and the overview's numbers and charts move. A screenshot of each page
goes to build/screenshots/dashboard/ (or $TURNOUT_SCREENSHOTS).

`test_keys_page` runs a gateway of its own (its own key database, so that the keys it makes bind
no other test): it creates a key on the Keys page, uses it, rotates another (old and new secrets
both work during the grace period), revokes them from the page and sees each refused with 401
within a second.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import run_gateway

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("TURNOUT_SCREENSHOTS", ROOT / "build/screenshots/dashboard"))
ADMIN = "dashboard-admin-key-0123456789"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def gateway(llama_server: str) -> Iterator[str]:
    config = {
        "server": {"admin_key": ADMIN},
        "providers": {
            # Two instances, read into memory rather than mapped: a load of about a second
            # (llama.cpp's own progress reports, half a bar per instance) instead of a quarter,
            # so that the Models page shows the bar part-way (test_dashboard asserts it does).
            "embedded": {"type": "embedded", "max_concurrency": 2,
                         "models": [{"name": "gemma-3-270m", "chat_format": "gemma",
                                     "n_ctx": 2048, "use_mmap": False}]},
            "llama": {"type": "llama-cpp-python", "endpoint": llama_server},
        },
    }  # fmt: skip
    with run_gateway(config) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("Debian's chromium and chromium-driver are needed (apt-get install)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def wait(what: Callable[[], Any], timeout: float = 60.0, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = what()
            if last:
                return last
        except Exception as exc:  # an element not there yet
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {message or what}: {last!r}")


def shot(driver: Any, name: str) -> None:
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 5000


def go(driver: Any, page: str) -> None:
    driver.execute_script(f"location.hash = '#{page}'")
    wait(lambda: driver.find_element("id", page).is_displayed(), 10, page)


def rows(driver: Any, table: str) -> list[Any]:
    return list(driver.find_elements("css selector", f"#{table} tbody tr"))


#: records (state, progress, bar width) of a model's row each time the page renders it
WATCH_BAR = """
const model = arguments[0], body = document.querySelector("#local-table tbody");
window.turnoutBars = [];
new MutationObserver(() => {
  const row = [...body.querySelectorAll("tr")].find((r) => r.dataset.model === model);
  const bar = row && row.querySelector(".bar");
  if (bar) window.turnoutBars.push(
    [row.dataset.state, Number(bar.dataset.progress), bar.firstChild.style.width]);
}).observe(body, {childList: true});
"""


def test_dashboard(gateway: str, browser: Any) -> None:
    d = browser
    d.get(gateway + "/ui")
    wait(lambda: d.find_element("id", "login").is_displayed(), 10, "the login form")
    shot(d, "0-login")
    d.find_element("id", "login-key").send_keys("not-the-key")
    d.find_element("css selector", "#login-form button").click()
    wait(lambda: "admin key" in d.find_element("id", "login-error").text, 10, "a refusal")
    d.find_element("id", "login-key").send_keys(ADMIN)
    d.find_element("css selector", "#login-form button").click()
    wait(lambda: d.find_element("id", "overview").is_displayed(), 10, "the overview")
    (cookie,) = [c for c in d.get_cookies() if c["name"] == "turnout_ui"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert ADMIN not in cookie["value"]
    assert d.execute_script("return document.cookie") == ""  # no script can read it

    # Providers: both real backends up.
    go(d, "providers")

    def up() -> dict[str, str]:
        found = {r.get_attribute("data-provider"): r.get_attribute("data-status")
                 for r in rows(d, "provider-table")}  # fmt: skip
        return found if found.get("embedded") == "up" and found.get("llama") == "up" else {}

    assert wait(up, 60, "both backends up") == {"embedded": "up", "llama": "up"}
    shot(d, "2-providers")

    # Models: load the embedded model from the page and watch its state and progress.
    go(d, "models")
    model = "embedded/gemma-3-270m"

    def local_row() -> Any:
        return next(r for r in rows(d, "local-table") if r.get_attribute("data-model") == model)

    def state() -> str:
        return str(local_row().get_attribute("data-state"))

    if wait(state, 30, "the embedded model's row") == "loaded":  # loaded by a probe: unload it
        local_row().find_element("tag name", "button").click()
        wait(lambda: state() == "unloaded", 30, "the model unloaded")
    seen: list[tuple[str, float]] = []

    def loaded() -> bool:
        row = local_row()
        progress = float(row.find_element("css selector", ".bar").get_attribute("data-progress"))
        seen.append((str(row.get_attribute("data-state")), progress))
        return seen[-1][0] == "loaded"

    # Every state of the row the page renders, as it renders it (each poll rebuilds the table).
    d.execute_script(WATCH_BAR, model)
    local_row().find_element("tag name", "button").click()
    wait(loaded, 120, "the model loaded")
    assert seen[0] == ("unloaded", 0.0) and seen[-1] == ("loaded", 1.0), seen
    rendered = d.execute_script("return window.turnoutBars")
    part_way = [(state, p, width) for state, p, width in rendered if 0 < p < 1]
    assert part_way, f"the bar was never shown part-way: {rendered}"
    assert all(state == "loading" for state, _, _ in part_way), rendered
    assert all(width == f"{round(100 * p)}%" for _, p, width in part_way), rendered
    progress = [p for _, p, _ in rendered]
    assert progress == sorted(progress), f"the bar went backwards: {rendered}"
    bar = local_row().find_element("css selector", ".bar")
    assert float(bar.get_attribute("data-progress")) == 1.0
    shot(d, "3-models")

    # Playground: stream a chat through each front and see it arrive in pieces.
    go(d, "playground")
    wait(lambda: len(d.find_elements("css selector", "#play-model option")) >= 2, 20, "models")
    d.find_element("css selector", f"#play-model option[value='{model}']").click()
    for front in ("openai", "anthropic", "ollama"):
        d.find_element("css selector", f"#play-front option[value='{front}']").click()
        d.find_element("id", "play-send").click()
        wait(lambda: d.find_element("id", "play-status").text.startswith(("done", "error")), 120,
             f"the {front} stream")  # fmt: skip
        status = d.find_element("id", "play-status").text
        assert status.startswith("done"), f"{front}: {status}"
        output = d.find_element("id", "play-output")
        assert output.text.strip(), front
        assert int(output.get_attribute("data-pieces")) > 1, f"{front} did not stream"
        if front == "openai":
            shot(d, "5-playground")

    # Requests: the three chats are in the log, newest first, searchable.
    go(d, "requests")
    wait(lambda: len(rows(d, "request-table")) >= 3, 20, "three requests in the log")
    text = d.find_element("id", "request-table").text
    assert "gemma-3-270m" in text and "embedded/gemma-3-270m" in text
    search = d.find_element("id", "request-search")
    search.send_keys("no-such-thing")
    wait(lambda: len(rows(d, "request-table")) == 0, 10, "an empty search")
    search.clear()
    search.send_keys("ok")
    wait(lambda: len(rows(d, "request-table")) >= 3, 10, "the search")
    shot(d, "4-requests")

    # Overview: the numbers and the charts moved.
    go(d, "overview")

    def card(name: str) -> str:
        return d.find_element("css selector", f".card[data-name='{name}'] .v").text

    wait(lambda: int(card("requests")) >= 3, 20, "the request count")
    assert float(card("req/s (last minute)")) >= 0
    # the charts: an hour of 10-second buckets, the chats counted in them
    wait(lambda: int(d.find_element("id", "chart-rps").get_attribute("data-total")) >= 3, 20,
         "the chats in the chart")  # fmt: skip
    points = d.find_element("css selector", "#chart-rps polyline").get_attribute("points")
    heights = {float(p.split(",")[1]) for p in points.split()}
    assert len(points.split()) == 360 and len(heights) > 1  # the line moved off the baseline
    assert "embedded" in d.find_element("id", "series").text
    shot(d, "1-overview")

    go(d, "keys")
    shot(d, "6-keys")

    # Logging out ends the session: the API refuses, the login form is back.
    d.find_element("id", "logout").click()
    wait(lambda: d.find_element("id", "login").is_displayed(), 10, "the login form again")
    refused = d.execute_script(
        "return fetch('/ui/api/requests').then(r => r.status)"
    )  # fmt: skip
    assert refused == 401


KEYS_ADMIN = "keys-page-admin-key-9876543210"


@pytest.fixture(scope="module")
def keyed_gateway(llama_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway with a key database of its own, in front of the shared llama-cpp-python server
    (probed and refreshed once, as conftest's llama_gateway: a probe would cut another gateway's
    stream on that server)."""
    data = tmp_path_factory.mktemp("keys-page")
    config = {
        "server": {"admin_key": KEYS_ADMIN, "models_refresh_seconds": 3600},
        "health": {"interval": 3600},
        "storage": {"database_url": f"sqlite:///{data / 'turnout.db'}",
                    "spool_path": str(data / "spool.jsonl")},
        "providers": {"llama": {"type": "llama-cpp-python", "endpoint": llama_server}},
    }  # fmt: skip
    with run_gateway(config) as url:
        yield url


def status_with(base: str, key: str, path: str = "/v1/models", body: Any = None) -> int:
    """The status of a request to the gateway with ``key`` as its bearer token."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method="POST" if data else "GET")
    request.add_header("Authorization", f"Bearer {key}")
    if data:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def refused_within(base: str, key: str) -> float:
    """Seconds until ``key`` is refused (401); fails after a second."""
    started = time.monotonic()
    while status_with(base, key) != 401:
        assert time.monotonic() - started < 1.0, "the key still works a second later"
        time.sleep(0.02)
    return time.monotonic() - started


def test_keys_page(keyed_gateway: str, browser: Any) -> None:
    d, base = browser, keyed_gateway
    d.get(base + "/ui")
    wait(lambda: d.find_element("id", "login").is_displayed(), 10, "the login form")
    d.find_element("id", "login-key").send_keys(KEYS_ADMIN)
    d.find_element("css selector", "#login-form button").click()
    wait(lambda: d.find_element("id", "overview").is_displayed(), 10, "the overview")
    go(d, "keys")

    def key_row(name: str) -> Any:
        return next(r for r in rows(d, "key-table") if r.get_attribute("data-key") == name)

    def create(name: str) -> str:
        d.find_element("id", "key-name").send_keys(name)
        d.find_element("id", "key-create").click()
        wait(lambda: d.find_element("id", "key-secret").is_displayed(), 10, f"{name}'s secret")
        assert d.find_element("id", "key-secret-name").text == name
        raw = str(d.find_element("id", "key-secret-value").text)
        wait(lambda: key_row(name).get_attribute("data-state") == "active", 10, f"{name} listed")
        return raw

    # Create a key on the page: shown once, listed by its prefix, and it works.
    raw = create("browser-ci")
    assert raw.startswith("gw_") and len(raw) > 30
    assert key_row("browser-ci").get_attribute("data-prefix") == raw[:11]
    assert raw not in d.find_element("id", "key-table").text  # the list: the prefix only
    assert status_with(base, raw) == 200
    chat = {"model": "gemma-3-270m", "max_tokens": 4,
            "messages": [{"role": "user", "content": "Say hi."}]}  # fmt: skip
    assert status_with(base, raw, "/v1/chat/completions", chat) == 200
    assert status_with(base, "gw_" + "x" * 32) == 401  # keys are in use now
    d.find_element("id", "key-secret-done").click()
    assert not d.find_element("id", "key-secret").is_displayed()
    assert raw not in d.page_source  # shown once: gone from the page

    # Rotate another key: during the grace period the old and the new secret both work.
    old = create("rotating")
    key_row("rotating").find_element("css selector", "button.rotate").click()
    wait(lambda: d.find_element("id", "key-secret-value").text not in ("", old), 10, "rotated")
    new = str(d.find_element("id", "key-secret-value").text)
    assert new.startswith("gw_") and new != old
    assert "works until" in d.find_element("id", "key-secret-note").text
    assert key_row("rotating").get_attribute("data-prefix") == new[:11]
    assert status_with(base, old) == 200 and status_with(base, new) == 200
    wait(lambda: len(rows(d, "usage-table")) >= 1, 10, "the usage table")  # the chat, per key
    assert "browser-ci" in d.find_element("id", "usage-table").text
    shot(d, "7-keys-manage")
    d.find_element("id", "key-secret-done").click()

    # Revoke from the page: refused within a second.
    def revoke(name: str) -> None:
        key_row(name).find_element("css selector", "button.revoke").click()
        alert = wait(lambda: d.switch_to.alert, 5, "the confirmation")
        assert name in alert.text
        alert.accept()

    revoke("browser-ci")
    assert refused_within(base, raw) < 1.0
    wait(lambda: key_row("browser-ci").get_attribute("data-state") == "revoked", 10, "revoked")
    assert status_with(base, raw, "/v1/chat/completions", chat) == 401
    revoke("rotating")
    assert refused_within(base, new) < 1.0 and refused_within(base, old) < 1.0
    wait(lambda: key_row("rotating").get_attribute("data-state") == "revoked", 10, "revoked")
    assert not key_row("rotating").find_elements("tag name", "button")  # nothing left to do
    assert raw not in d.page_source and new not in d.page_source and old not in d.page_source
    shot(d, "8-keys-revoked")
