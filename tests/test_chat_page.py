"""The chat page (`GET /`) in a real headless Chromium against the real server: a tiny random GPT-2 with the real
GPT-2 tokenizer behind the continuous-batching engine, the Flask app and waitress.

Set PANGU_UPDATE_SCREENSHOT=1 to refresh docs/img/chat_page.png from the conversation the test holds.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest
import serving_fixtures
from conftest import REPO_ROOT
from serving_fixtures import MODEL_NAME, http_request, parse_json

served = serving_fixtures.served
serving_model = serving_fixtures.serving_model
serving_tokenizer = serving_fixtures.serving_tokenizer

CHROMIUM = os.environ.get("PANGU_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = REPO_ROOT / "docs" / "img" / "chat_page.png"
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def server(served):
    """The real app on 127.0.0.1 (a free port) under waitress; (base URL, engine)."""
    return served.url, served.engine


@pytest.fixture(scope="module")
def browser():
    """Headless system Chromium through playwright (`playwright install` cannot download here)."""
    from playwright.sync_api import Error, sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium not found at {CHROMIUM} (install the chromium package or set PANGU_CHROMIUM)")
    driver = sync_playwright().start()
    try:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, headless=True,
                                          args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
    except Error as error:
        driver.stop()
        pytest.skip(f"Chromium at {CHROMIUM} cannot be launched: {str(error).splitlines()[0]}")
    yield chromium
    chromium.close()
    driver.stop()


@pytest.fixture(scope="module")
def page(browser, server):
    """One page for the module's tests, in order: each one goes on from the state the one before left."""
    base, _ = server
    page = browser.new_page(viewport={"width": 1100, "height": 720})
    page.set_default_timeout(TIMEOUT_MS)
    page.bodies = []  # the JSON bodies the page posted to /v1/chat/completions
    page.on("request", lambda r: page.bodies.append(r.post_data_json)
            if r.url.endswith("/v1/chat/completions") else None)
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(base + "/")
    page.wait_for_selector("body[data-ready]")
    yield page
    assert page.errors == [], f"script errors on the page: {page.errors}"
    page.close()


def _complete(base: str, body: dict) -> str:
    """The same request, not streamed, straight to the API; returns the reply text."""
    status, _, data = http_request(base, "POST", "/v1/chat/completions", {**body, "stream": False})
    answer = parse_json(data)
    assert status == 200, answer
    return answer["choices"][0]["message"]["content"]


def _settings(page, **values) -> None:
    for name, value in values.items():
        page.fill("#" + name.replace("_", "-"), str(value))


def _wait_replies(page, count: int):
    page.wait_for_function(f"document.querySelectorAll('.message.assistant[data-done]').length >= {count}")
    return page.locator(".message.assistant").nth(count - 1)


def test_page_shows_the_zoo_and_the_served_model(page):
    assert "PanGu-α / GPT-2" in page.inner_text("h1")
    assert page.inner_text("#model-name") == MODEL_NAME
    assert page.inner_text("#status") == "Ready"
    defaults = {name: page.input_value("#" + name) for name in
                ("max-tokens", "temperature", "top-p", "top-k", "frequency-penalty", "presence-penalty")}
    assert {k: float(v) for k, v in defaults.items()} == {
        "max-tokens": 200, "temperature": 1.0, "top-p": 1.0, "top-k": 3, "frequency-penalty": 1.5,
        "presence-penalty": 0.3}
    assert page.is_disabled("#stop") and page.is_enabled("#send")


def test_streamed_reply_equals_the_api_and_history_is_sent(page, server, tmp_path):
    base, _ = server
    _settings(page, temperature=0, max_tokens=24)
    # Count the DOM updates of the conversation: a streamed reply grows in several of them.
    page.evaluate("""() => {
        window.updates = 0;
        new MutationObserver((list) => { window.updates += list.length; })
            .observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    }""")
    page.fill("#prompt", "Hello there, model zoo!")
    page.press("#prompt", "Enter")  # Enter sends
    first = _wait_replies(page, 1)
    reply = first.locator(".content").inner_text()
    body = page.bodies[-1]
    assert body["stream"] is True and body["model"] == MODEL_NAME
    assert body["messages"] == [{"role": "user", "content": "Hello there, model zoo!"}]
    assert (body["max_tokens"], body["temperature"], body["top_k"], body["top_p"]) == (24, 0, 3, 1.0)
    assert (body["frequency_penalty"], body["presence_penalty"]) == (1.5, 0.3)
    assert reply and reply == _complete(base, body)
    chunks = int(first.get_attribute("data-chunks"))
    assert chunks > 1, "the reply came in one piece, not streamed"
    assert page.evaluate("window.updates") > chunks  # the user bubble, the empty reply, then each chunk
    assert first.get_attribute("data-finish-reason") in ("length", "stop")
    assert page.inner_text("#status").startswith(f"Done: {chunks} chunks")

    # Shift+Enter is a new line, not a send; the second turn carries the first one as history.
    page.click("#prompt")
    page.keyboard.type("Tell me more.")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("Please.")
    assert page.input_value("#prompt") == "Tell me more.\nPlease."
    assert len(page.bodies) == 1
    page.click("#send")
    second = _wait_replies(page, 2)
    body = page.bodies[-1]
    assert body["messages"] == [{"role": "user", "content": "Hello there, model zoo!"},
                                {"role": "assistant", "content": reply},
                                {"role": "user", "content": "Tell me more.\nPlease."}]
    assert second.locator(".content").inner_text() == _complete(base, body)
    assert page.locator(".message.user").count() == 2

    # The conversation on screen: always into tmp, into docs/img when asked to.
    path = tmp_path / "chat_page.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000
    if os.environ.get("PANGU_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOT)


def test_stop_cancels_the_request_on_the_server(page, server, monkeypatch):
    base, engine = server
    page.click("#new-chat")
    assert page.locator("#messages > *").count() == 0
    # Slow each decode step down so the reply is still streaming when Stop is pressed.
    step = engine.decoder.step

    def slow_step(*args, **kwargs):
        time.sleep(0.05)
        return step(*args, **kwargs)

    monkeypatch.setattr(engine.decoder, "step", slow_step)
    cancelled = engine.stats.cancelled
    _settings(page, max_tokens=100, temperature=1.0)
    page.fill("#prompt", "<b>Go on</b> & on")
    page.click("#send")
    page.wait_for_function("Number(document.querySelector('.message.assistant').dataset.chunks) >= 2")
    assert page.is_enabled("#stop") and page.is_disabled("#send")
    page.click("#stop")
    reply = _wait_replies(page, 1)
    assert "stopped" in reply.get_attribute("class")
    assert reply.get_attribute("data-finish-reason") == "cancelled"
    assert page.inner_text("#status").startswith("Stopped after")
    assert int(reply.get_attribute("data-chunks")) < 100
    assert page.is_enabled("#send") and page.is_disabled("#stop")
    deadline = time.monotonic() + 10
    while (engine.running or engine.stats.cancelled == cancelled) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.running == 0, "the server kept generating after Stop"
    assert engine.stats.cancelled == cancelled + 1
    # Text is shown as text: the markup typed in stays characters.
    user = page.locator(".message.user .content")
    assert user.inner_text() == "<b>Go on</b> & on"
    assert page.locator("#messages b").count() == 0


def test_http_error_shows_the_server_message(page):
    page.click("#new-chat")
    _settings(page, max_tokens=0)
    page.fill("#prompt", "This one is refused.")
    page.click("#send")
    page.wait_for_selector("#error:not([hidden])")
    error = page.inner_text("#error")
    assert error.startswith("HTTP 400") and "max_tokens" in error
    # The failed turn is taken back and its text returned to the box for another try.
    assert page.locator("#messages > *").count() == 0
    assert page.input_value("#prompt") == "This one is refused."
    assert page.is_enabled("#send")
    _settings(page, max_tokens=200)
