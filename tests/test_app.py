"""The story playground: Gradio's Python client against the running app, and a real headless Chromium."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT
from test_hf_contract import saved_model_with_tokenizer

gradio_client = pytest.importorskip("gradio_client", reason="gradio is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    model = tmp_path_factory.mktemp("model")
    saved_model_with_tokenizer(model)  # a tiny model with GPT-2's tokenizer, 64 positions
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "-m", "tinygpt.cli", "app", "--model", str(model), "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            assert server.poll() is None and time.time() < deadline, "the app did not start"
            time.sleep(0.5)
    yield url, str(model)
    server.terminate()
    server.wait(timeout=30)


def story(client, model, prompt="Once upon a time", max_new_tokens=12, temperature=0.8, seed=0):
    return client.predict(model, prompt, max_new_tokens, temperature, 50, 0.95, 1.0, seed, api_name="/generate")


def test_a_prompt_gives_a_story_and_a_seed_repeats_it(app_url):
    url, model = app_url
    client = gradio_client.Client(url, verbose=False)
    first = story(client, model, seed=7)
    assert first.startswith("Once upon a time") and len(first) > len("Once upon a time")
    assert story(client, model, seed=7) == first
    assert any(story(client, model, seed=s) != first for s in (8, 9, 10))


@pytest.mark.parametrize("overrides, message", [
    (dict(prompt="   "), "Write a prompt first"),
    (dict(max_new_tokens=1000), "Max new tokens (1000) is too many: the model has 64 positions"),
    (dict(temperature="warm"), "Could not preprocess input component"),
    (dict(max_new_tokens="many"), "Could not preprocess input component"),
])
def test_bad_values_give_a_message_not_a_crash(app_url, overrides, message):
    url, model = app_url
    client = gradio_client.Client(url, verbose=False)
    with pytest.raises(gradio_client.exceptions.AppError, match=message.replace("(", r"\(").replace(")", r"\)")):
        story(client, model, **overrides)
    assert story(client, model).startswith("Once upon a time")  # the app still serves


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)")
def test_in_a_real_browser(app_url):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    url, _ = app_url
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(url, wait_until="networkidle")
        page.get_by_label("Max new tokens").fill("20")  # the tiny test model has only 64 positions
        page.locator("#prompt textarea").fill("Once upon a time")
        page.locator("#generate").click()
        page.wait_for_function("() => document.querySelector('#story textarea').value.length > 16", timeout=60_000)
        text = page.locator("#story textarea").input_value()
        page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
        browser.close()
    assert text.startswith("Once upon a time") and len(text) > len("Once upon a time")
    assert (ARTIFACTS / "app.png").stat().st_size > 10_000


def test_stop_cancels_a_story_and_the_app_serves_the_next(app_url):
    url, model = app_url
    client = gradio_client.Client(url, verbose=False)
    job = client.submit(model, "Once upon a time", 59, 0.8, 50, 0.95, 1.0, 0, api_name="/generate")
    time.sleep(0.5)
    job.cancel()
    assert story(client, model, max_new_tokens=5).startswith("Once upon a time")


def test_space_folder(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tinygpt.cli", "space", "--model-id", "user/tiny-stories",
                             "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    readme = (tmp_path / "README.md").read_text()
    assert "sdk: gradio" in readme and "app_file: app.py" in readme and "TINYGPT_MODEL: user/tiny-stories" in readme
    app_code = (tmp_path / "app.py").read_text()
    assert "import tinygpt" not in app_code and "from tinygpt" not in app_code and "trust_remote_code=True" in app_code
    assert "gradio" in (tmp_path / "requirements.txt").read_text()
