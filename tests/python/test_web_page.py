"""The chat page in a real browser: Debian's chromium + chromium-driver, driven by selenium.

Loads /, picks the model, sends a message and watches the answer stream in with its TTFT and
tok/s figures, stops an endless generation, and checks the topology view. Saves screenshots
under tests/artifacts/. Without chromium or its driver these fail, unless EXO_SKIP=chromium.
"""

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from conftest import get_text, require_capability

CHROMIUM = os.environ.get("EXO_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("EXO_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def _missing():
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).is_file()):
        return f"chromium is not installed ({CHROMIUM}); apt-get install -y chromium chromium-driver"
    if not (shutil.which(CHROMEDRIVER) or Path(CHROMEDRIVER).is_file()):
        return f"chromedriver is not installed ({CHROMEDRIVER}); apt-get install -y chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r tests/python/requirements.txt)"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _missing()
    if reason:
        require_capability("chromium", "test_web_page", reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="exo-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1400,900",
    ):
        options.add_argument(arg)
    # A driver path given: selenium never runs its manager (which would try to download one).
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(predicate, timeout=15, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as e:  # the page may be mid-update
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def screenshot(driver, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def open_page(driver, base_url, api_key):
    driver.get(base_url + "/")
    if api_key:
        # The page keeps the key the user typed in localStorage; set it as a user would have.
        driver.execute_script("localStorage.setItem('exo.apiKey', arguments[0]);", api_key)
        driver.get(base_url + "/")
    wait_for(lambda: driver.execute_script("return !!window.exoMarkdown"), what="scripts loaded")


def pick_model(driver, model):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    select = driver.find_element(By.ID, "model")
    wait_for(lambda: model in [o.get_attribute("value") for o in Select(select).options], what=f"model {model} listed")
    Select(select).select_by_value(model)
    assert select.get_attribute("value") == model


def assistant_bodies(driver):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, ".msg.assistant .body")


def send(driver, text):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def test_markdown_renderer_escapes_and_formats(browser, base_url, api_key):
    open_page(browser, base_url, api_key)
    cases = {
        "**b** and *i* and `x<y`": "<p><strong>b</strong> and <em>i</em> and <code>x&lt;y</code></p>",
        "<img src=x onerror=alert(1)>": "<p>&lt;img src=x onerror=alert(1)&gt;</p>",
        "```js\nlet a = '<b>';\n```": '<pre><code class="language-js">let a = &#39;&lt;b&gt;&#39;;</code></pre>',
        "- one\n- two": "<ul><li>one</li><li>two</li></ul>",
        "1. a\n2. b": "<ol><li>a</li><li>b</li></ol>",
        "[x](javascript:alert(1))": "<p>[x](javascript:alert(1))</p>",
        "[x](https://example.com)": '<p><a href="https://example.com" target="_blank" rel="noopener noreferrer">x</a></p>',
        "para one\n\npara two": "<p>para one</p>\n<p>para two</p>",
    }
    for src, want in cases.items():
        got = browser.execute_script("return window.exoMarkdown.render(arguments[0]);", src)
        assert got == want, f"{src!r}: {got!r}"


def test_page_asks_for_the_api_key(browser, base_url, api_key, model):
    if not api_key:
        pytest.skip("the server has no API key")
    from selenium.webdriver.common.by import By

    browser.get(base_url + "/")
    browser.execute_script("localStorage.clear();")
    browser.get(base_url + "/")
    form = browser.find_element(By.ID, "key-form")
    wait_for(form.is_displayed, what="the key form after a 401")
    assert "needs an API key" in browser.find_element(By.ID, "status").text
    time.sleep(3.5)  # a topology poll passes: what is typed must survive it
    field = browser.find_element(By.ID, "api-key")
    field.send_keys(api_key[:3])
    time.sleep(3.5)
    field.send_keys(api_key[3:])
    assert field.get_attribute("value") == api_key
    form.find_element(By.CSS_SELECTOR, "button").click()
    pick_model(browser, model)
    assert not form.is_displayed()
    assert browser.execute_script("return localStorage.getItem('exo.apiKey');") == api_key


def test_chat_streams_with_figures_and_topology(browser, base_url, api_key, model, is_fake):
    from selenium.webdriver.common.by import By

    open_page(browser, base_url, api_key)
    pick_model(browser, model)

    # Long enough to watch it stream (the fake server sends a token every 40 ms).
    words = " ".join(f"w{i}" for i in range(30))
    send(browser, "Hello **web** " + words)
    assert wait_for(lambda: browser.find_element(By.ID, "stop").is_enabled(), what="stop enabled while streaming")
    lengths = set()

    def finished():
        bodies = assistant_bodies(browser)
        if bodies:
            lengths.add(len(bodies[-1].text))
        return bodies and browser.find_element(By.ID, "send").is_enabled() and bodies[-1].text

    answer = wait_for(finished, timeout=60, interval=0.02, what="the answer")
    assert len(lengths - {0}) >= 3, f"the answer grew token by token, saw lengths {sorted(lengths)}"
    body = assistant_bodies(browser)[-1]
    if is_fake:
        assert answer == "Hello! You said: Hello web " + words
        # The echoed markdown was rendered, not shown raw.
        assert body.find_element(By.TAG_NAME, "strong").text == "web"

    ttft = browser.find_element(By.ID, "ttft").text
    tps = browser.find_element(By.ID, "tps").text
    tokens = browser.find_element(By.ID, "tokens").text
    assert re.fullmatch(r"\d+ ms", ttft), ttft
    assert re.fullmatch(r"\d+(\.\d)?", tps), tps
    assert float(tps) > 0
    if is_fake:
        assert tokens == str(5 + 30)  # "Hello!", " You", " said:", " Hello", " **web**", " w0" … " w29"
        assert 2 < float(tps) < 200, tps

    # The topology view: every node, and the ring of each model.
    topology = json.loads(get_text(base_url, "/v1/topology", api_key))
    nodes = topology.get("nodes") or []
    wait_for(
        lambda: len(browser.find_elements(By.CSS_SELECTOR, "#topology .node")) == len(nodes),
        what=f"{len(nodes)} nodes shown",
    )
    shown = [e.get_attribute("data-peer") for e in browser.find_elements(By.CSS_SELECTOR, "#topology .node")]
    assert shown == [n.get("peer_id") for n in nodes]
    for ring_model in (topology.get("rings") or {}):
        assert browser.find_elements(By.CSS_SELECTOR, f'#topology .ring[data-model="{ring_model}"]')
    if is_fake:
        text = browser.find_element(By.ID, "topology").text
        assert "this node" in text and "direct" in text
        assert "[0, 16)" in text and "[16, 32)" in text
        assert "8.0 GiB free / 16 GiB" in text
    assert "updated" in browser.find_element(By.ID, "topo-updated").text

    path = screenshot(browser, "web-chat.png")
    assert path.stat().st_size > 10_000


def test_stop_button_cancels_the_stream(browser, base_url, api_key, model, is_fake):
    from selenium.webdriver.common.by import By

    def disconnects():
        text = get_text(base_url, "/metrics", api_key)
        m = re.search(r"^exo_api_client_disconnects_total (\d+)$", text, re.M)
        return int(m.group(1))

    before = disconnects()
    open_page(browser, base_url, api_key)
    if is_fake:
        pick_model(browser, "fake-endless")
        send(browser, "go on forever")
        wait_for(lambda: assistant_bodies(browser)[-1].text.count("tick") >= 5, what="ticks streaming")
    else:
        # A real model asked for a long answer, stopped after its first words.
        pick_model(browser, model)
        earlier = len(assistant_bodies(browser))
        send(browser, "Count from 1 to 500, one number per line, nothing else.")
        wait_for(
            lambda: len(assistant_bodies(browser)) > earlier and len(assistant_bodies(browser)[-1].text) >= 12,
            what="the answer streaming",
        )
    browser.find_element(By.ID, "stop").click()
    wait_for(lambda: browser.find_element(By.ID, "send").is_enabled(), what="send enabled after stop")
    assert browser.find_element(By.ID, "status").text == "stopped"
    assert not browser.find_element(By.ID, "stop").is_enabled()
    # The server saw the client leave and dropped the generation.
    wait_for(lambda: disconnects() == before + 1, timeout=10, what="the server's disconnect counter")
    screenshot(browser, "web-chat-stopped.png")
