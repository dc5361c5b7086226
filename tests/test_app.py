"""The story playground: Gradio's Python client against the running app (as a visitor reaches it, over HTTP),
and a real headless Chromium."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import ROOT, saved_model_with_tokenizer

gradio_client = pytest.importorskip("gradio_client", reason="gradio is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(command, env=None, cwd=None):
    """Start a playground server on a free port; yields its URL and stops it afterwards."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SERVER_PORT": str(port),
           **(env or {})}
    server = subprocess.Popen([*command, "--port", str(port)] if "app" in command else command, env=env, cwd=cwd,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            assert server.poll() is None and time.time() < deadline, "the app did not start"
            time.sleep(0.5)
    try:
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    model = tmp_path_factory.mktemp("model")
    saved_model_with_tokenizer(model)  # a tiny model with GPT-2's tokenizer, 64 positions
    return str(model)


@pytest.fixture(scope="module")
def app_url(tiny_model_dir):
    yield from ((url, tiny_model_dir) for url in serve([sys.executable, "-m", "tinygpt", "app", "--model",
                                                        tiny_model_dir]))


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
    (dict(prompt="Once upon a time " * 70_000), "The prompt is 1,190,000 characters long; this playground takes at "
                                                "most 10,000"),
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


@pytest.mark.slow
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


def _hostile_model(folder: Path, marker: Path) -> Path:
    """A model folder whose custom code, if a server ever imported it, would leave a marker file."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilModel"}}))
    payload = f"open({str(marker)!r}, 'w').write('imported')\n"
    (folder / "configuration_evil.py").write_text(payload + "from transformers import PretrainedConfig\n"
                                                  "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    (folder / "modeling_evil.py").write_text(payload)
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["tokenization_evil.T", None]}}))
    (folder / "tokenization_evil.py").write_text(payload)
    return folder


def test_a_visitor_cannot_make_the_server_load_another_model(app_url, tmp_path):
    """The model is the operator's choice: another folder or Hub id sent through the public API is refused, and
    nothing of it is read, imported or downloaded; the page goes on serving stories."""
    url, model = app_url
    marker = tmp_path / "imported.txt"
    hostile = _hostile_model(tmp_path / "hostile", marker)
    client = gradio_client.Client(url, verbose=False)
    for other in (str(hostile), "someone/remote-code-model", f"{model}/../{hostile.name}"):
        with pytest.raises(gradio_client.exceptions.AppError, match="not in the list of choices"):
            story(client, other)
    assert not marker.exists()
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate"]
    model_parameter = info["parameters"][0]
    assert model_parameter["parameter_name"] == "model" and model_parameter["type"]["enum"] == [model]
    assert story(client, model).startswith("Once upon a time")


def test_the_served_models_are_a_fixed_list_checked_by_the_server(tmp_path):
    """Besides Gradio's own check of the dropdown, write_story itself refuses a model the operator did not list."""
    from tinygpt import app

    with pytest.raises(app.gr.Error, match="is not a model of this playground"):
        next(app.write_story({"runs/cpu": None}, "elsewhere", "Once upon a time", 5, 0.7, 50, 0.95, 1.0, 0))
    assert app.operator_models(" runs/a, runs/b ,runs/a") == ["runs/a", "runs/b"]
    with pytest.raises(ValueError, match="no model to serve: pass --model"):
        app.operator_models("")


def test_a_space_serves_only_its_configured_model(tiny_model_dir, tmp_path):
    """The Space folder's app.py, run where tinygpt is not installed, with TINYGPT_MODEL as the Space sets it."""
    subprocess.run([sys.executable, "-m", "tinygpt", "space", "--model-id", "user/tiny", "--out", str(tmp_path)],
                   check=True, capture_output=True)
    marker = tmp_path / "imported.txt"
    hostile = _hostile_model(tmp_path / "hostile", marker)
    command = [sys.executable, "-c", "import sys, runpy; sys.modules['tinygpt'] = None; "
                                     "runpy.run_path('app.py', run_name='__main__')"]
    for url in serve(command, env={"TINYGPT_MODEL": tiny_model_dir}, cwd=tmp_path):
        client = gradio_client.Client(url, verbose=False)
        with pytest.raises(gradio_client.exceptions.AppError, match="not in the list of choices"):
            story(client, str(hostile))
        assert story(client, tiny_model_dir).startswith("Once upon a time")
    assert not marker.exists()


def test_space_folder(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tinygpt.cli", "space", "--model-id", "user/tiny-stories",
                             "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    readme = (tmp_path / "README.md").read_text()
    assert "sdk: gradio" in readme and "app_file: app.py" in readme and "TINYGPT_MODEL: user/tiny-stories" in readme
    app_code = (tmp_path / "app.py").read_text()
    assert "import tinygpt" not in app_code and "from tinygpt" not in app_code and "trust_remote_code=True" in app_code
    requirements = {Requirement(line).name: Requirement(line).specifier
                    for line in (tmp_path / "requirements.txt").read_text().split()}
    assert set(requirements) == {"torch", "transformers", "gradio"}
    # the modeling code refuses transformers < 5.24 (its `cache` API): the Space must not install one
    assert "5.24.0" in requirements["transformers"] and "5.23.0" not in requirements["transformers"]
    assert "5.99" in requirements["transformers"] and "6.0" not in requirements["transformers"]
