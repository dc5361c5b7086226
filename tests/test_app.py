"""The story playground: Gradio's Python client against the running app (as a visitor reaches it, over HTTP),
and a real headless Chromium."""

import functools
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import ROOT, free_port, running_server, saved_model_with_tokenizer

gradio_client = pytest.importorskip("gradio_client", reason="gradio is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "test-artifacts"


def serve(command, env=None, cwd=None):
    """Start a playground server on a free port; yields its URL and stops it afterwards."""
    port = free_port()
    env = {"GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SERVER_PORT": str(port), **(env or {})}
    url = f"http://127.0.0.1:{port}/"
    for _ in running_server([*command, "--port", str(port)] if "app" in command else command, url, env, cwd):
        yield url


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
    # whole numbers where the page sends them (a repetition penalty of 1, top-p 1): transformers wants floats
    assert client.predict(model, "Once upon a time", 5, 1, 50, 1, 1, 0, api_name="/generate").startswith("Once")


@pytest.mark.parametrize("overrides, message", [
    (dict(prompt="   "), "Write a prompt first"),
    (dict(prompt="Once upon a time " * 70_000), "The prompt is 1,190,000 characters long; this playground takes at "
                                                "most 10,000"),
    (dict(max_new_tokens=1000), "plus Max new tokens (1000) is past the model's 64 positions"),
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


def test_visitors_together_get_the_stories_they_get_alone(app_url):
    """Concurrent visitors share the model (one batch); each seeded story is still the one it is alone."""
    url, model = app_url
    alone = [story(gradio_client.Client(url, verbose=False), model, max_new_tokens=20, seed=s) for s in range(4)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda s: story(gradio_client.Client(url, verbose=False), model, max_new_tokens=20,
                                                 seed=s), range(4)))
    assert together == alone and len(set(alone)) > 1


def _visitor(tokenizer, prompt, seed, max_new_tokens):
    from tinygpt.batching import Story

    settings = dict(temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.1)
    return Story(tokenizer(prompt, return_tensors="pt").input_ids[0], settings, seed, max_new_tokens)


def _story(visitor, stop_after=None) -> tuple[str, int]:
    """The visitor's final text and how many updates it got; presses Stop after `stop_after` updates."""
    text, updates = "", 0
    while (piece := visitor.pieces.get(timeout=120)) is not None:
        assert not isinstance(piece, Exception), piece
        text, updates = piece, updates + 1
        if updates == stop_after:
            visitor.stop.set()
    return text, updates


def test_the_batcher_decodes_waiting_visitors_together_each_with_its_own_seed(tiny_model_dir):
    from tinygpt.app import load
    from tinygpt.batching import StoryBatcher

    tokenizer, lm = load(tiny_model_dir)
    prompts = [("Once upon a time", 1, 20), ("Lily and Ben went to the park. They", 2, 12), ("The dog", 3, 30)]
    alone = StoryBatcher(tokenizer, lm)
    expected = []
    for prompt in prompts:
        alone.submit(visitor := _visitor(tokenizer, *prompt))
        expected.append(_story(visitor)[0])
    batcher = StoryBatcher(tokenizer, lm)
    batcher.submit(first := _visitor(tokenizer, "Tom had a red ball.", 0, 40))  # busy: the next three wait
    visitors = [_visitor(tokenizer, *prompt) for prompt in prompts]
    for visitor in visitors:
        batcher.submit(visitor)
    assert [_story(v)[0] for v in visitors] == expected
    _story(first)
    assert max(batcher.batch_sizes) >= 3 and sum(k * n for k, n in batcher.batch_sizes.items()) == 4


def test_stop_ends_one_story_and_not_the_others_in_its_batch(tiny_model_dir):
    from tinygpt.app import load
    from tinygpt.batching import StoryBatcher

    tokenizer, lm = load(tiny_model_dir)
    batcher = StoryBatcher(tokenizer, lm)
    batcher.submit(busy := _visitor(tokenizer, "Tom had a red ball.", 0, 30))
    batcher.submit(stopped := _visitor(tokenizer, "Once upon a time", 1, 40))
    batcher.submit(other := _visitor(tokenizer, "The dog", 2, 40))
    _, stopped_updates = _story(stopped, stop_after=3)
    _, other_updates = _story(other)
    _story(busy)
    assert stopped_updates <= 5 and other_updates >= 30  # (updates skip half characters: a few fewer than tokens)


def test_example_prompts_are_the_ones_the_models_training_sampled(tmp_path):
    from tinygpt.app import example_prompts
    from tinygpt.training import DEFAULT_PROMPTS

    trained, other, bare = tmp_path / "trained", tmp_path / "other", tmp_path / "bare"
    for folder, prompts in [(trained, DEFAULT_PROMPTS), (other, ["Tom had a red ball. One day,", "A cat"])]:
        folder.mkdir()
        samples = [{"prompt": p, "story": p + " ..."} for p in prompts]
        (folder / "training_summary.json").write_text(json.dumps({"samples": samples}))
    bare.mkdir()
    assert example_prompts([str(trained)]) == DEFAULT_PROMPTS
    assert example_prompts([str(trained), str(other), str(bare)]) == [*DEFAULT_PROMPTS, "A cat"]
    assert example_prompts([str(bare)]) == ["Once upon a time"]


def test_example_prompts_of_a_hub_model_come_from_its_cached_summary(tmp_path, monkeypatch):
    """A Hub id goes through huggingface_hub's public download (here offline, from a cache laid out as the Hub
    client lays it out); a repository without a summary gets the default prompt."""
    from tinygpt import app

    revision = "0" * 40
    snapshot = tmp_path / "models--someone--stories" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "training_summary.json").write_text(json.dumps({"samples": [{"prompt": "A cat", "story": "..."}]}))
    (tmp_path / "models--someone--stories" / "refs").mkdir()
    (tmp_path / "models--someone--stories" / "refs" / "main").write_text(revision)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # read at each download
    monkeypatch.setattr(app, "hf_hub_download", functools.partial(app.hf_hub_download, cache_dir=tmp_path))
    assert app.example_prompts(["someone/stories"]) == ["A cat"]
    assert app.example_prompts(["someone/uncached"]) == ["Once upon a time"]


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
    assert "trust_remote_code=True" in app_code  # run without tinygpt: test_a_space_serves_only_its_configured_model
    batching = (tmp_path / "batching.py").read_text()
    assert "import tinygpt" not in batching and "from tinygpt" not in batching and "from ." not in batching
    requirements = {Requirement(line).name: Requirement(line).specifier
                    for line in (tmp_path / "requirements.txt").read_text().split()}
    assert set(requirements) == {"torch", "transformers", "gradio"}
    # the package's tested range (docs/models.md, "Which transformers"): nothing older than CI tests
    assert "5.16.1" in requirements["transformers"] and "5.16.0" not in requirements["transformers"]
    assert "5.99" in requirements["transformers"] and "6.0" not in requirements["transformers"]
