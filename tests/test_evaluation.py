"""The evaluations: bits per byte (one definition for training, `tinygpt eval` and lm-evaluation-harness's
context), the story-consistency items and their score, and the shipped lm-evaluation-harness tasks run by
lm-eval itself on a model trained by train_hf.py."""

import json
import math
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import needs_data, tiny_model
from tinygpt.consistency import EVALS, _pair_ids, evaluate_consistency, load_items
from tinygpt.data import read_stories
from tinygpt.evaluation import evaluate_texts, evaluation_blocks


def test_the_consistency_items():
    items = load_items()
    assert len(items) >= 1_000 and len({item["id"] for item in items}) == len(items)
    kinds = {item["kind"] for item in items}
    assert kinds >= {"hand-written", "name reference", "who has what", "pronoun agreement", "earlier object",
                     "allowed or refused"}
    assert sum(item["kind"] == "hand-written" for item in items) == 78
    for item in items:
        assert item["right"] != item["wrong"] and item["prefix"] == item["prefix"].strip(), item["id"]
        assert " " not in item["right"] + item["wrong"], item["id"]  # one word each, compared like for like
        if item["kind"] in ("name reference", "who has what", "earlier object", "earlier colour"):
            # plausible on its own: the wrong word is in the story before the cut, as the right one is
            assert item["wrong"] in item["prefix"] and item["right"] in item["prefix"], item["id"]
    # a Yes/No kind scores tracking, not a preference for one word: as many of each right answer
    answers = [item["right"] for item in items if item["kind"] == "allowed or refused"]
    assert answers.count("Yes") == answers.count("No") == len(answers) / 2 > 50


def test_generated_items_come_from_stories_no_training_file_contains(tmp_path):
    """The generator is deterministic and its items are cut from the stories it is given, at a word the story
    goes on with."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parents[1] / "scripts" / "make_consistency_items.py"
    spec = importlib.util.spec_from_file_location("make_items", script)
    make_items = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_items)
    story = ("Once upon a time, there was a girl named Lily. She had a red ball. Lily had a friend named Tom. "
             "Tom had a blue kite. One day, Tom said, \"Can I play with the ball?\" Lily said, \"Yes, you can!\" "
             "Lily gave the ball to Tom. Tom played with the red ball and Lily flew Tom's kite.")
    refused = "Sam saw a cake. Sam asked, \"May I eat the cake?\" Mom said, \"No, it is for the party.\" Sam was sad."
    stories = tmp_path / "stories.txt"
    stories.write_text(story + "\n<|endoftext|>\n" + refused + "\n<|endoftext|>\n")
    out_a, out_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    make_items.main(["--stories", str(stories), "--out", str(out_a)])
    make_items.main(["--stories", str(stories), "--out", str(out_b)])
    items = [json.loads(line) for line in out_a.read_text().splitlines()]
    assert out_a.read_text() == out_b.read_text() and len(items) >= 4
    for item in items:
        text = story if item["id"].startswith("valid-0-") else refused
        assert text.startswith(item["prefix"]) and text[len(item["prefix"]):].lstrip().startswith(item["right"])
    assert {i["kind"] for i in items} >= {"allowed or refused", "name reference", "who has what", "earlier colour"}
    assert sorted(i["right"] for i in items if i["kind"] == "allowed or refused") == ["No", "Yes"]  # one of each

    stories.write_text(story + "\n<|endoftext|>\n")  # a Yes and no No: the kind would score a preference
    make_items.main(["--stories", str(stories), "--out", str(out_a)])
    assert "allowed or refused" not in out_a.read_text()


def test_consistency_interval():
    from tinygpt.consistency import interval

    assert interval(50, 100) == [0.402, 0.598] and interval(0, 10) == [0.0, 0.0] and interval(1000, 1400)[1] < 0.74


@needs_data
def test_consistency_score_equals_one_item_at_a_time(trained):
    """The batched score (rows sorted by length, the head only where a continuation token is predicted) equals
    scoring every continuation alone, token by token from the full logits."""
    from tinygpt.consistency import continuation_logprobs

    model, tokenizer = AutoModelForCausalLM.from_pretrained(trained), AutoTokenizer.from_pretrained(trained)
    items = load_items()[:12] + load_items()[-12:]  # generated items (longer than 64 positions), hand-written ones
    result = evaluate_consistency(model, tokenizer, items)
    pairs = [(item["prefix"], " " + choice) for item in items for choice in (item["right"], item["wrong"])]
    batched = continuation_logprobs(model, tokenizer, pairs, batch_size=5)  # batches of mixed lengths, padded
    right, alone = 0, []
    for item in items:
        scores = []
        for choice in (item["right"], item["wrong"]):
            context, continuation = _pair_ids(tokenizer, item["prefix"], " " + choice)
            # lm-eval's window: the last positions + 1 tokens, the last of them only predicted
            ids = torch.tensor([(context + continuation)[-(model.config.max_position_embeddings + 1):][:-1]])
            logprobs = model(ids).logits[0].log_softmax(-1)
            n = len(continuation)
            scores.append(sum(logprobs[-n + i, token].item() for i, token in enumerate(continuation)))
        right += scores[0] >= scores[1]
        alone += scores
    assert batched == pytest.approx(alone, rel=1e-4, abs=1e-4)
    assert result["correct"] == right and result["items"] == 24 and result["accuracy"] == right / 24


def test_bits_per_byte_counts_every_token_once_and_the_bytes_of_the_stories():
    model = tiny_model(vocab_size=97)

    class Chars:  # a character-level "tokenizer" over the tiny vocabulary
        eos_token_id = 96

        def __call__(self, texts, add_special_tokens=False, **kwargs):  # the keywords of an HF tokenizer call
            return type("Encoding", (), {"input_ids": [[ord(c) % 96 for c in text] for text in texts]})

    texts = ["abcdefghij" * 5, "héllo wörld", "x" * 70]
    blocks, n_bytes = evaluation_blocks(texts, Chars(), block_size=64)
    # 50 + 11 + 70 characters and an eos after each story: 134 tokens, the last block shorter; 13 bytes for 11 chars
    assert [len(b) for b in blocks] == [64, 64, 6] and n_bytes == 50 + 13 + 70
    blocks, _ = evaluation_blocks(texts, Chars(), block_size=50)
    assert [len(b) for b in blocks] == [50, 50, 34]
    result = evaluate_texts(model, Chars(), texts, block_size=50, batch_size=2, progress=False)
    assert result["tokens"] == 134 and result["blocks"] == 3
    # by hand: every block's tokens after its first, in float32
    total = 0.0
    for block in blocks:
        ids = torch.tensor([block])
        total += model(ids, labels=ids).loss.item() * (len(block) - 1)
    assert result["bits_per_byte"] == pytest.approx(total / math.log(2) / n_bytes, rel=1e-5)
    with pytest.raises(ValueError, match="block size 65 must be between 2 and the model's max_position_embeddings"):
        evaluate_texts(model, Chars(), texts, block_size=65)



def test_bits_per_byte_of_stories_read_apart_is_each_story_scored_alone():
    """--stories-apart: every token is predicted from its own story only, the story starting at position 0; the
    first token of the next story is predicted at the <|endoftext|> that ends a story, from that story."""
    model = tiny_model(vocab_size=97)

    class Chars:
        eos_token_id = 96

        def __call__(self, texts, add_special_tokens=False, **kwargs):
            return type("Encoding", (), {"input_ids": [[ord(c) % 96 for c in text] for text in texts]})

    texts = ["abcdefghij", "hello", "xyz" * 4]  # one block of 11 + 6 + 13 tokens
    result = evaluate_texts(model, Chars(), texts, block_size=64, progress=False, stories_apart=True)
    pieces = [[ord(c) % 96 for c in text] + [96] for text in texts]
    total = 0.0
    for i, piece in enumerate(pieces):
        logprobs = model(torch.tensor([piece])).logits[0].log_softmax(-1)  # the story alone, from position 0
        targets = piece[1:] + (pieces[i + 1][:1] if i + 1 < len(pieces) else [])
        total -= sum(logprobs[j, token].item() for j, token in enumerate(targets))
    assert result["tokens"] == 30 and result["stories_apart"]
    assert result["bits_per_byte"] == pytest.approx(total / math.log(2) / 27, rel=1e-5)  # 27 bytes of text
    together = evaluate_texts(model, Chars(), texts, block_size=64, progress=False)["bits_per_byte"]
    assert together != pytest.approx(result["bits_per_byte"], rel=1e-3)


def lm_eval(trained, tasks, metadata=None, tmp_path=None):
    """lm-evaluation-harness's CLI with its HF backend, as the README shows it."""
    command = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
               f"pretrained={trained},trust_remote_code=True,dtype=float32", "--tasks", tasks, "--include_path",
               str(EVALS), "--device", "cpu", "--batch_size", "8", "--output_path", str(tmp_path / "lm_eval")]
    if metadata:
        command += ["--metadata", json.dumps(metadata)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**__import__("os").environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    files = sorted((tmp_path / "lm_eval").rglob("results_*.json"))
    return json.loads(files[-1].read_text())


@needs_data
@pytest.mark.slow
def test_lm_eval_runs_the_shipped_tasks_with_the_trained_context(trained, corpus, tmp_path):
    """lm-eval 0.4.13 with `--include_path $(tinygpt lm-eval-tasks)`: its consistency accuracy is the package's,
    its bits per byte is finite, and it reads the model's context (64 positions here) from the config."""
    folder = subprocess.run([sys.executable, "-m", "tinygpt", "lm-eval-tasks"], capture_output=True, text=True)
    assert folder.stdout.strip() == str(EVALS)
    valid = corpus[1]
    results = lm_eval(trained, "tinystories_consistency,tinystories_bpb",
                      {"data_files": [str(valid)], "max_stories": 20}, tmp_path)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(trained), AutoTokenizer.from_pretrained(trained)
    ours = evaluate_consistency(model, tokenizer)
    assert results["results"]["tinystories_consistency"]["acc,none"] == pytest.approx(ours["accuracy"], abs=1e-9)
    bpb = results["results"]["tinystories_bpb"]["bits_per_byte,none"]
    assert 0 < bpb < 10 and results["n-samples"]["tinystories_bpb"]["effective"] == 20

    from lm_eval.models.huggingface import HFLM

    assert HFLM(pretrained=str(trained), device="cpu").max_length == model.config.max_position_embeddings == 64
    # lm-eval scores each story from its start; ours packs the stories: close, not equal
    packed = evaluate_texts(model, tokenizer, read_stories(valid)[:20], progress=False)["bits_per_byte"]
    assert abs(bpb - packed) < 0.15 * packed
