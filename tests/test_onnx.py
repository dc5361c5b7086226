"""Run anywhere: the ONNX export with its KV cache against PyTorch (onnxruntime), the int8 variant, the CLI, and
the exported folder in a real browser with transformers.js."""

import shutil
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from conftest import ROOT, WINDOW, free_port, needs_data, tiny_model
from tinygpt import TinyGPTForCausalLM
from tinygpt.onnx_export import INT8_FILE, ONNX_FILE, OnnxGenerator, export_onnx

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WEB = ROOT / "web"


@pytest.fixture(scope="module")
def exported(tokenizer_dir, tmp_path_factory):
    """A tiny model (window 8, 64 positions) with the 500-token pruned tokenizer, saved and exported."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = tiny_model(vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    source, out = tmp_path_factory.mktemp("model"), tmp_path_factory.mktemp("onnx")
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    export_onnx(source, out, int8=True)
    return model, tokenizer, source, out


@needs_data
@pytest.mark.parametrize("prompt_length", [5, 20])  # shorter and longer than the window of 8
def test_onnx_steps_match_pytorch_and_local_layers_keep_their_window(exported, prompt_length):
    model, _, _, out = exported
    generator = OnnxGenerator(out)
    ids = torch.randint(0, model.config.vocab_size - 1, (1, prompt_length), generator=torch.Generator().manual_seed(1))
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=30, do_sample=False)
    got = generator.generate(ids.numpy(), max_new_tokens=30)
    assert np.array_equal(got, expected.numpy())  # greedy tokens equal model.generate()
    full = model(expected).logits.detach().numpy()  # (1, T, V): PyTorch without a cache
    past = [np.zeros((1, 4, 0, 8), np.float32) for _ in range(8)]
    logits, past = generator.step(expected[:, :prompt_length].numpy(), np.ones((1, prompt_length), np.int64), past)
    np.testing.assert_allclose(logits, full[:, :prompt_length], atol=1e-4, rtol=0)
    for t in range(prompt_length, expected.shape[1]):  # then one token at a time, with the cache
        logits, past = generator.step(expected[:, t:t + 1].numpy(), np.ones((1, t + 1), np.int64), past)
        np.testing.assert_allclose(logits[:, -1], full[:, t], atol=1e-4, rtol=0)
        lengths = [past[2 * i].shape[2] for i in range(4)]
        assert lengths == [t + 1, min(t + 1, WINDOW - 1), t + 1, min(t + 1, WINDOW - 1)]  # global, local, ...


@needs_data
def test_sampling_int8_and_the_position_limit(exported):
    model, tokenizer, _, out = exported
    generator = OnnxGenerator(out)
    ids = np.array([[5, 6, 7]])
    sample = dict(max_new_tokens=20, do_sample=True, temperature=0.8, top_k=20, top_p=0.9, seed=3)
    first = generator.generate(ids, **sample)
    assert np.array_equal(first, generator.generate(ids, **sample)) and first.shape[1] > 3
    assert np.array_equal(generator.generate(ids, max_new_tokens=20, do_sample=True, top_k=1),
                          generator.generate(ids, max_new_tokens=20))  # top-k 1 is greedy
    assert generator.generate(ids, max_new_tokens=500).shape[1] == 64  # stops at the model's last position
    with pytest.raises(ValueError, match="the prompt is 64 tokens, but the model has 64 positions"):
        generator.generate(np.zeros((1, 64), np.int64))
    int8 = OnnxGenerator(out, int8=True)
    assert (out / INT8_FILE).stat().st_size < 0.5 * (out / ONNX_FILE).stat().st_size
    fp32_logits, _ = generator.step(ids, np.ones_like(ids), [np.zeros((1, 4, 0, 8), np.float32)] * 8)
    int8_logits, _ = int8.step(ids, np.ones_like(ids), [np.zeros((1, 4, 0, 8), np.float32)] * 8)
    assert np.corrcoef(fp32_logits.ravel(), int8_logits.ravel())[0, 1] > 0.99


@needs_data
def test_cli_exports_and_generates_the_same_story(exported, tmp_path):
    _, _, source, _ = exported

    def tinygpt(*args):
        result = subprocess.run([sys.executable, "-m", "tinygpt", *args], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    listing = tinygpt("export", "onnx", "--model", str(source), "--out", str(tmp_path / "onnx"))
    assert "onnx/model.onnx" in listing and "config.json" in listing and "tokenizer.json" in listing
    story = ["--max-new-tokens", "25", "--greedy", "Once upon a time"]
    assert tinygpt("generate", "--model", str(tmp_path / "onnx"), *story) == tinygpt("generate", "--model",
                                                                                    str(source), *story)
    bad = subprocess.run([sys.executable, "-m", "tinygpt", "export", "onnx", "--model", str(tmp_path / "nope"),
                          "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr
    TinyGPTForCausalLM.from_pretrained(source).save_pretrained(tmp_path / "no-tokenizer")
    bad = subprocess.run([sys.executable, "-m", "tinygpt", "export", "onnx", "--model", str(tmp_path / "no-tokenizer"),
                          "--out", str(tmp_path / "y")], capture_output=True, text=True)
    assert bad.returncode == 2 and "no tokenizer (tokenizer.json)" in bad.stderr and "Traceback" not in bad.stderr


@needs_data
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)")
@pytest.mark.skipif(not (WEB / "node_modules" / "@huggingface" / "transformers").is_dir(),
                    reason="transformers.js is not installed: npm install --ignore-scripts --prefix web (CI does)")
def test_the_browser_page_tells_the_story_pytorch_tells(exported, tmp_path):
    """web/index.html in headless Chromium loads the export with transformers.js (no server code: a static file
    server) and streams, greedily, exactly the story PyTorch's generate() gives."""
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    model, tokenizer, _, out = exported
    root = tmp_path / "site"
    root.mkdir()
    (root / "web").symlink_to(WEB)
    (root / "story-model").symlink_to(out)
    ids = tokenizer("Once upon a time", return_tensors="pt").input_ids
    expected = tokenizer.decode(model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=30,
                                               do_sample=False)[0], skip_special_tokens=True)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--directory", str(root)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/web/index.html", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/web/index.html?model=/story-model")
            page.wait_for_function("() => !document.getElementById('generate').disabled", timeout=120_000)
            page.locator("#greedy").check()
            page.locator("#max-new-tokens").fill("30")
            page.locator("#generate").click()
            page.wait_for_function("() => document.getElementById('story').dataset.done === 'true'", timeout=120_000)
            story = page.locator("#story").text_content()
            page.screenshot(path=str(tmp_path / "web.png"))
            browser.close()
    finally:
        server.terminate()
    assert story == expected
