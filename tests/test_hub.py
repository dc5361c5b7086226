"""push_to_hub.py: the assembled repository folder, the model card, the upload at the HfApi boundary, and
that the token is never written anywhere. Offline."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

import tinygpt.hub as hub
from conftest import ROOT, needs_data, run_python
from tinygpt import TinyGPTForCausalLM
from tinygpt.parameters import parameter_table

TOKEN = "hf_TESTTOKENdoNotLeak0123456789abcdef"
pytestmark = needs_data


class FakeApi:
    """Stands in for huggingface_hub.HfApi and records what publishing asks of it."""

    calls: list = []

    def __init__(self, token=None):
        FakeApi.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id, **kwargs):
        FakeApi.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def create_branch(self, repo_id, **kwargs):
        FakeApi.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, folder_path, **kwargs):
        files = sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir())
        FakeApi.calls.append(("upload_folder", {"folder_path": folder_path, "files": files, **kwargs}))
        return "https://huggingface.co/user/tiny/commit/abc"


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    FakeApi.calls = []
    monkeypatch.setattr(hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored login from the machine
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return FakeApi


def test_dry_run_builds_a_folder_that_loads_without_tinygpt(trained, tmp_path):
    out = tmp_path / "repo"
    result = subprocess.run([sys.executable, str(ROOT / "push_to_hub.py"), "--model", str(trained), "--repo-id",
                             "user/tiny-stories", "--dry-run", "--local-dir", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "would upload" in result.stdout and "model.safetensors" in result.stdout
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "configuration_tinygpt.py", "modeling_tinygpt.py", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "generation_config.json", "README.md", "loss.png"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]  # weights only as safetensors
    # nothing host-specific is published: no absolute path of the trainer's folders, data or site-packages
    import site

    private = [str(trained), str(trained.parent), str(Path.home()), *site.getsitepackages()]
    for path in out.iterdir():
        if path.suffix in (".json", ".md", ".py", ".txt", ".jsonl"):
            text = path.read_text()
            assert not [p for p in private if p in text], (path.name, [p for p in private if p in text])
    # the tokenizer knows the model's context and carries no load-time arguments, as trained and as published
    positions = json.loads((out / "config.json").read_text())["max_position_embeddings"]
    for folder in (trained, out):
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
        assert tokenizer_config["model_max_length"] == positions
        assert not {"is_local", "local_files_only"} & tokenizer_config.keys()
    assert json.loads((out / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"] == \
        "modeling_tinygpt.TinyGPTForCausalLM"
    ids = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10] * 6]  # 60 of the 64 positions it was trained on
    code = f"""
import json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
model = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained({str(out)!r}, trust_remote_code=True)
text = pipeline("text-generation", model={str(out)!r}, trust_remote_code=True)("Once upon a time", max_new_tokens=5,
                do_sample=False)[0]["generated_text"]
print(json.dumps({{"logits": model(torch.tensor({ids})).logits.tolist(), "text": text, "vocab": len(tokenizer)}}))
"""
    stdout = run_python(code, block_tinygpt=True, cwd=tmp_path)
    assert stdout.splitlines()[-1].startswith("{"), [line[:200] for line in stdout.splitlines()]
    loaded = json.loads(stdout.splitlines()[-1])
    source = TinyGPTForCausalLM.from_pretrained(trained)
    torch.testing.assert_close(torch.tensor(loaded["logits"]), source(torch.tensor(ids)).logits, rtol=0, atol=1e-6)
    assert loaded["text"].startswith("Once upon a time") and loaded["vocab"] == source.config.vocab_size


def test_card_metadata_parses_and_matches_model_and_summary(trained, tmp_path):
    hub.assemble_repo(trained, tmp_path, "user/tiny-stories", license="mit")
    card = ModelCard.load(tmp_path / "README.md")
    meta = card.data.to_dict()
    assert meta["license"] == "mit" and meta["datasets"] == ["roneneldan/TinyStories"]
    assert meta["pipeline_tag"] == "text-generation" and meta["library_name"] == "transformers"
    summary = json.loads((trained / "training_summary.json").read_text())
    metrics = {m["type"]: m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert metrics["bits_per_byte"] == round(summary["eval"]["eval_bits_per_byte"], 4)
    assert metrics["perplexity"] == round(summary["eval"]["eval_perplexity"], 4)
    assert metrics["accuracy"] == round(summary["consistency"]["accuracy"], 4)
    assert f"({summary['consistency']['correct']}/{summary['consistency']['items']})" in card.text
    for name, count in parameter_table(TinyGPTForCausalLM.from_pretrained(trained)):
        assert f"| {name} | {count:,} |" in card.text
    assert "trust_remote_code=True" in card.text and "user/tiny-stories" in card.text
    assert f"{summary['eval']['eval_bits_per_byte']:.4f}" in card.text
    assert summary["samples"][0]["story"].split("\n")[0] in card.text
    # the held-out figures name the data they were measured on: here the run's --validation_file
    valid = Path(summary["data"]["validation_file"][0]).name
    splits = {m["type"]: r["dataset"]["split"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert splits["bits_per_byte"] == splits["loss"] == valid and f"on the validation file {valid}" in card.text


def test_figures_on_a_held_out_part_of_the_training_files_are_not_called_the_validation_split():
    from tinygpt.summary import RunSummary

    held = RunSummary(data={"train_file": ["../shared/train.txt", "x/more.txt"], "validation_file": None,
                            "validation_split_percentage": 2.0})
    assert held.evaluated_on() == ("held-out 2% of train.txt, more.txt",
                                   "2% of the stories in train.txt, more.txt held out from training")
    assert RunSummary(data={"dataset": "roneneldan/TinyStories"}).evaluated_on()[0] == "validation"


def test_the_card_says_which_parts_learn_at_another_rate(trained):
    """The recipe's embeddings learn at 3x the rate (a preset argument, not in the command the card shows): the
    summary records the multipliers and the card's learning-rate row names them, and names nothing at 1x."""
    from tinygpt.summary import RunSummary

    summary = RunSummary.read(trained)
    assert summary.hyperparameters["embedding_lr_multiplier"] == summary.hyperparameters["head_lr_multiplier"] == 1
    assert summary.hyperparameters["zero_init_residual"] is False
    model = TinyGPTForCausalLM.from_pretrained(trained)
    assert "| learning rate / schedule | 0.003 / cosine |" in hub.model_card(model, "u/m", summary, "mit").text
    summary.hyperparameters.update(embedding_lr_multiplier=3.0, head_lr_multiplier=0.5)
    assert "| learning rate / schedule | 0.003 (embeddings x3, head x0.5) / cosine |" in \
        hub.model_card(model, "u/m", summary, "mit").text


def test_the_card_names_muons_momentum_where_the_summary_has_it(trained):
    from tinygpt.summary import RunSummary

    summary = RunSummary.read(trained)
    model = TinyGPTForCausalLM.from_pretrained(trained)
    assert "| optimizer | AdamW |" in hub.model_card(model, "u/m", summary, "mit").text
    summary.hyperparameters.update(muon=True, muon_momentum=0.9)
    assert "| optimizer | Muon (block matrices, momentum 0.9) + AdamW |" in \
        hub.model_card(model, "u/m", summary, "mit").text
    del summary.hyperparameters["muon_momentum"]  # a summary written before it was recorded
    assert "| optimizer | Muon (block matrices) + AdamW |" in hub.model_card(model, "u/m", summary, "mit").text


def test_upload_calls_the_hub_api_with_the_right_arguments(trained, tmp_path, fake_hub, monkeypatch, capsys, caplog):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    args = hub.PublishArguments(model=str(trained), repo_id="user/tiny-stories", local_dir=str(tmp_path / "repo"),
                                private=True, revision="v1", commit_message="first model")
    hub.publish(args)
    calls = dict((name, kwargs) for name, kwargs in fake_hub.calls)
    assert calls["init"] == {"token": TOKEN}
    assert calls["create_repo"] == {"repo_id": "user/tiny-stories", "private": True, "repo_type": "model",
                                    "exist_ok": True}
    assert calls["create_branch"]["branch"] == "v1"
    upload = calls["upload_folder"]
    assert upload["repo_id"] == "user/tiny-stories" and upload["revision"] == "v1"
    assert upload["commit_message"] == "first model" and upload["folder_path"] == str(tmp_path / "repo")
    assert {"model.safetensors", "README.md", "modeling_tinygpt.py", "tokenizer.json"} <= set(upload["files"])
    # the token went to HfApi and nowhere else
    printed = capsys.readouterr()
    assert TOKEN not in printed.out + printed.err + caplog.text
    for path in (tmp_path / "repo").rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_bad_input_fails_before_any_upload(trained, tmp_path, fake_hub, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    no_tokenizer = tmp_path / "no_tokenizer"
    TinyGPTForCausalLM.from_pretrained(trained).save_pretrained(no_tokenizer)
    cases = [(dict(model=str(empty)), "no weights (model.safetensors)"),
             (dict(model=str(no_tokenizer)), "no tokenizer (tokenizer.json)"),
             (dict(model=str(tmp_path / "missing")), "no such model folder"),
             (dict(repo_id="not a repo"), "malformed repo id 'not a repo'"),
             (dict(repo_id="a/b/c"), "malformed repo id 'a/b/c'"),
             (dict(repo_id="just-a-name"), "use the form USER/NAME")]
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    for overrides, message in cases:
        args = hub.PublishArguments(**{"model": str(trained), "repo_id": "user/tiny", **overrides})
        with pytest.raises(hub.PublishError, match=re.escape(message)):
            hub.publish(args)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(hub.PublishError, match="no Hugging Face token"):
        hub.publish(hub.PublishArguments(model=str(trained), repo_id="user/tiny", local_dir=str(tmp_path / "r")))
    assert fake_hub.calls == [] and not (tmp_path / "r").exists()  # nothing assembled, nothing sent
