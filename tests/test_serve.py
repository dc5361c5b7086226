"""`tinygpt serve` (the OpenAI-compatible completions server) used as OpenAI users do, over HTTP on localhost with the
`openai` client; `tinygpt export gpt-neo`."""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from transformers import AutoTokenizer, GPTNeoForCausalLM

from conftest import free_port, running_server, saved_model_with_tokenizer
from tinygpt import TinyGPTForCausalLM

openai = pytest.importorskip("openai", reason="openai is not installed (pip install 'tinygpt[serve]')")

PROMPT = "Once upon a time"


def serve(folder, *options):
    """`tinygpt serve FOLDER` on a free port; yields an OpenAI client for it."""
    port = free_port()
    command = [sys.executable, "-m", "tinygpt", "serve", folder, "--port", str(port), *options]
    for _ in running_server(command, f"http://127.0.0.1:{port}/health", env={"OMP_NUM_THREADS": "1"}):
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny model (GPT-2's tokenizer, 64 positions) behind `tinygpt serve` (requests batched, the default),
    and an OpenAI client for it."""
    folder = str(tmp_path_factory.mktemp("model"))
    saved_model_with_tokenizer(folder)
    for client in serve(folder):
        yield folder, client


def greedy(folder, max_new_tokens) -> str:
    """What generate() gives for the prompt alone, greedily: the text a served completion must equal."""
    model, tokenizer = TinyGPTForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(PROMPT, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)


def test_a_story_and_a_streamed_story_are_generate_s(served):
    folder, client = served
    expected = greedy(folder, 12)
    reply = client.completions.create(model=folder, prompt=PROMPT, max_tokens=12, temperature=0)
    assert reply.choices[0].text == expected and reply.usage.completion_tokens == 12
    assert reply.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(model=folder, prompt=PROMPT, max_tokens=12, temperature=0, stream=True))
    assert len(chunks) > 2 and "".join(c.choices[0].text for c in chunks if c.choices) == expected


def test_one_request_after_another_gives_the_same_story(served):
    folder, _ = served
    for client in serve(folder, "--max-batch", "1"):
        reply = client.completions.create(model=folder, prompt=PROMPT, max_tokens=12, temperature=0)
        assert reply.choices[0].text == greedy(folder, 12)
        with pytest.raises(openai.BadRequestError, match="past the model's 64 positions"):
            client.completions.create(model=folder, prompt=PROMPT, max_tokens=100)


def test_without_max_tokens_a_story_stops_at_the_last_position(served):
    folder, client = served
    reply = client.completions.create(model=folder, prompt=PROMPT, temperature=0)
    assert reply.usage.prompt_tokens + reply.usage.completion_tokens <= 64


def test_sixteen_concurrent_requests_are_answered_each_as_it_would_be_alone(served):
    """Requests decoded together keep their own seed, temperature and length."""
    folder, client = served

    def ask(seed):
        return client.completions.create(model=folder, prompt=PROMPT[:4 + seed], max_tokens=4 + seed % 5,
                                         temperature=0.5 + seed % 3 * 0.3, top_p=0.9, seed=seed)

    with ThreadPoolExecutor(16) as pool:
        together = [r.choices[0].text for r in pool.map(ask, range(16))]
    alone = [ask(seed) for seed in range(16)]
    assert [r.usage.completion_tokens for r in alone] == [4 + seed % 5 for seed in range(16)]
    assert together == [r.choices[0].text for r in alone] and len(set(together)) > 8


@pytest.mark.parametrize("request_, message", [
    (dict(prompt="the end " * 40), "positions: shorten it"),
    (dict(prompt=PROMPT, max_tokens=100), "past the model's 64 positions"),
    (dict(prompt=PROMPT, max_tokens=4, temperature=-1), "temperature must be a number >= 0"),
    (dict(prompt=PROMPT, max_tokens=4, model="someone/else"), "pinned to"),
    (dict(prompt=PROMPT, extra_body={"generation_config": '{"max_new_tokens": 500}'}), "generation_config is not"),
], ids=["long prompt", "max_tokens", "negative temperature", "unknown model", "generation_config"])
def test_bad_requests_get_a_400_that_names_the_problem_and_serving_goes_on(served, request_, message):
    folder, client = served
    with pytest.raises(openai.BadRequestError, match=message):
        client.completions.create(**{"model": folder, **request_})
    assert client.completions.create(model=folder, prompt=PROMPT, max_tokens=3).usage.completion_tokens == 3


def test_no_request_makes_the_server_load_another_model_or_unload_its_own(served, tmp_path):
    """The model is the operator's: /load_model (which would read the folder a client names) and /reset (which
    would unload the model for everyone) are not served, and serving goes on."""
    import urllib.error
    import urllib.request

    folder, client = served
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "evil", "auto_map": {"AutoConfig": "x.Y"}}')
    base = str(client.base_url).removesuffix("/v1/")
    for path, body in (("/load_model", {"model": str(tmp_path / "other")}), ("/reset", {})):
        request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = response.read().decode()
        except urllib.error.HTTPError as error:
            answer = error.read().decode()
        assert "Not Found" in answer, (path, answer)
    assert client.completions.create(model=folder, prompt=PROMPT, max_tokens=3).usage.completion_tokens == 3


def test_chat_and_the_other_generation_routes_are_refused_with_a_pointer_to_completions(served):
    """A 400 in OpenAI's shape, never a 500 from deep inside transformers' handlers, and serving goes on."""
    import urllib.error
    import urllib.request

    folder, client = served
    with pytest.raises(openai.BadRequestError, match="use /v1/completions"):
        client.chat.completions.create(model=folder, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="/v1/responses is not served"):
        client.responses.create(model=folder, input="Once upon a time")
    base = str(client.base_url).removesuffix("/v1/")
    for path in ("/v1/systemone", "/v1/audio/transcriptions"):
        request = urllib.request.Request(base + path, data=b'{"model": "x"}', headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == 400, path
        assert "use /v1/completions" in json.loads(refused.value.read())["error"]["message"]
    assert client.completions.create(model=folder, prompt=PROMPT, max_tokens=3).usage.completion_tokens == 3


def test_export_gpt_neo_gives_a_native_folder_with_the_same_logits(tmp_path):
    model, tokenizer = saved_model_with_tokenizer(tmp_path / "tinygpt")
    subprocess.run([sys.executable, "-m", "tinygpt", "export", "gpt-neo", "--model", str(tmp_path / "tinygpt"),
                    "--out", str(tmp_path / "neo")], check=True, capture_output=True)
    neo = GPTNeoForCausalLM.from_pretrained(tmp_path / "neo")
    assert not list((tmp_path / "neo").glob("*.py"))  # transformers' own code, nothing to trust
    ids = torch.tensor([[5, 17, 300, 4000, 12, 9, 7, 7, 1] * 3])
    torch.testing.assert_close(neo(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
    assert AutoTokenizer.from_pretrained(tmp_path / "neo").model_max_length == 64


@pytest.mark.parametrize("name, value, label, message", [
    ("temperature", -1, "temperature", "temperature must be a number >= 0 and <= 5, got -1"),
    ("temperature", "warm", "Temperature", "Temperature must be a number, got 'warm'"),
    ("top_p", 0, "top_p", "top_p must be a number > 0 and <= 1, got 0"),
    ("top_k", 2.5, "--top-k", "--top-k must be a whole number, got 2.5"),
    ("seed", True, "seed", "seed must be a number, got True"),
    ("top_k", float("inf"), "Top-k", "Top-k must be a number, got inf"),
    ("repetition_penalty", 4, "Repetition penalty", "Repetition penalty must be a number >= 0.5 and <= 3, got 4"),
])
def test_one_rule_checks_every_sampling_setting_and_names_it_as_the_caller_does(name, value, label, message):
    from tinygpt.batching import SettingError, checked

    with pytest.raises(SettingError, match=f"^{message.replace('(', '[(]').replace(')', '[)]')}$"):
        checked(name, value, label)
    assert checked("top_k", 50.0) == 50 and isinstance(checked("top_k", 50.0), int)
    assert checked("temperature", 0) == 0  # greedy
    assert isinstance(checked("repetition_penalty", 1), float)  # transformers' processors refuse an int


def test_one_rule_fits_prompt_and_new_tokens_in_the_positions():
    from tinygpt.batching import SettingError, new_tokens

    assert new_tokens(10, None, 64) == 54  # all the positions the prompt leaves
    assert new_tokens(10, 54, 64) == 54
    with pytest.raises(SettingError, match=r"the prompt \(10 tokens\) plus --max-new-tokens \(55\) is past the "
                                           r"model's 64 positions: ask for at most 54$"):
        new_tokens(10, 55, 64, "--max-new-tokens")
    with pytest.raises(SettingError, match="the prompt is 64 tokens, but the model has 64 positions: shorten it to "
                                           "at most 63 tokens"):
        new_tokens(64, None, 64)
    with pytest.raises(SettingError, match="max_new_tokens must be a number >= 1, got 0"):
        new_tokens(10, 0, 64)
