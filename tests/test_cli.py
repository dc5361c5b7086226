"""The `tinygpt` console script, run as a user runs it."""

import subprocess
import sys

import pytest

from conftest import saved_model_with_tokenizer


def tinygpt(*args):
    """`python -m tinygpt ...`, which is the `tinygpt` console script (both call tinygpt.cli.main)."""
    return subprocess.run([sys.executable, "-m", "tinygpt", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_compiled_generation_from_the_shell(tmp_path):
    saved_model_with_tokenizer(tmp_path)
    eager = tinygpt("generate", "--model", str(tmp_path), "--max-new-tokens", "6", "--greedy", "Once upon a time")
    compiled = tinygpt("generate", "--model", str(tmp_path), "--max-new-tokens", "6", "--greedy", "--compile",
                       "Once upon a time")
    assert compiled.returncode == 0 and compiled.stdout == eager.stdout


def test_the_console_script_and_python_m_tinygpt_are_the_same_command():
    import shutil

    script = shutil.which("tinygpt")
    assert script is not None, "the tinygpt console script is not installed (pip install -e .)"
    console = subprocess.run([script, "presets"], capture_output=True, text=True, timeout=120)
    assert console.returncode == 0 and console.stdout == tinygpt("presets").stdout
    usage = tinygpt("no-such-command")
    assert usage.returncode == 2 and "invalid choice: 'no-such-command'" in usage.stderr


def test_every_entry_point_answers_a_wrong_flag_with_one_line_and_status_2():
    """argparse's answer (usage, `error: unrecognized arguments: ...`, status 2), never HfArgumentParser's traceback;
    the three run at once (each is mostly start-up)."""
    from conftest import ROOT

    cases = {"train_hf": ([str(ROOT / "train_hf.py"), "--preset", "cpu", "--output_dir", "x", "--output-dir2", "1"],
                          "unrecognized arguments: --output-dir2 1; --output-dir2 (did you mean --output_dir?)"),
             "push_to_hub": ([str(ROOT / "push_to_hub.py"), "--model", "m", "--repo-id", "user/name", "--out", "1"],
                             "unrecognized arguments: --out 1"),
             "tinygpt": (["-m", "tinygpt", "generate", "--model", "m", "hi", "--temprature", "1"],
                         "unrecognized arguments: --temprature 1")}
    runs = {name: subprocess.Popen([sys.executable, *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True) for name, (command, _) in cases.items()}
    for name, run in runs.items():
        _, err = run.communicate(timeout=120)
        assert run.returncode == 2 and "Traceback" not in err, (name, err[-2000:])
        assert cases[name][1] in err.strip().splitlines()[-1], (name, err[-500:])


def test_presets_lists_the_seed_parameter_count():
    result = tinygpt("presets")
    assert result.returncode == 0 and "tinystories-41m" in result.stdout and "41,026,560" in result.stdout


def test_generate_streams_text_and_rejects_bad_input(tmp_path):
    saved_model_with_tokenizer(tmp_path)
    result = tinygpt("generate", "--model", str(tmp_path), "--max-new-tokens", "6", "--greedy", "Once upon a time")
    assert result.returncode == 0 and result.stdout.startswith("Once upon a time")
    # without options, the model's generation_config decides: greedy for this model (do_sample is off)
    assert tinygpt("generate", "--model", str(tmp_path), "--max-new-tokens", "6", "Once upon a time").stdout \
        == result.stdout
    too_long = tinygpt("generate", "--model", str(tmp_path), "--max-new-tokens", "100", "Once upon a time")
    assert too_long.returncode == 2 and "past the model's 64 positions" in too_long.stderr
    missing = tinygpt("generate", "--model", str(tmp_path / "nope"), "hi")
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    no_app = tinygpt("app", "--model", str(tmp_path), "--model", str(tmp_path / "nope"))
    assert no_app.returncode == 2 and "nope' does not exist" in no_app.stderr and "Traceback" not in no_app.stderr


def test_eval_keeps_the_memory_each_batch_frees(tmp_path, monkeypatch):
    """`tinygpt eval` sets glibc to keep freed memory (tinygpt.optim.keep_freed_memory) before it evaluates, as
    training does: each batch frees and allocates the same logits."""
    import tinygpt.cli as cli
    import tinygpt.optim as optim

    saved_model_with_tokenizer(tmp_path / "model")
    stories = tmp_path / "stories.txt"
    stories.write_text("Once upon a time there was a cat.\n<|endoftext|>\nTom had a red ball. He liked it.\n")
    calls = []
    monkeypatch.setattr(optim, "keep_freed_memory", lambda: calls.append("kept") or True)
    assert cli.main(["eval", "--model", str(tmp_path / "model"), "--data", str(stories)]) == 0
    assert calls == ["kept"]


def test_eval_stories_apart_scores_each_story_as_read_alone(tmp_path, capsys):
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import tinygpt.cli as cli
    from tinygpt.evaluation import evaluate_texts

    saved_model_with_tokenizer(tmp_path / "model")
    texts = ["Once upon a time there was a cat.", "Tom had a red ball. He liked it."]
    stories = tmp_path / "stories.txt"
    stories.write_text("\n<|endoftext|>\n".join(texts) + "\n")
    results = []
    for apart in ([], ["--stories-apart"]):
        assert cli.main(["eval", "--model", str(tmp_path / "model"), "--data", str(stories), "--json", *apart]) == 0
        results.append(json.loads(capsys.readouterr().out.splitlines()[-1]))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    expected = evaluate_texts(model, tokenizer, texts, progress=False, stories_apart=True)
    assert results[1]["stories_apart"] and not results[0]["stories_apart"]
    assert results[1]["bits_per_byte"] == pytest.approx(expected["bits_per_byte"], rel=1e-5)
    assert results[1]["bits_per_byte"] != pytest.approx(results[0]["bits_per_byte"], rel=1e-4)
