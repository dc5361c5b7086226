"""train_hf.py end to end on small slices of the real TinyStories text: data formats, the final folder and its
context, the time budget, resuming after kill -9, bad input, `tinygpt eval`, and DDP with two CPU processes."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from conftest import ROOT, SHARED_DATA, TINY, gpt2_source, needs_data, train_hf
from tinygpt import TinyGPTConfig, TinyGPTForCausalLM
from tinygpt.data import CausalLMCollator, DataArguments, load_raw_datasets, read_stories, tokenize_for_training

pytestmark = needs_data


def tinygpt_eval(*args) -> dict:
    """`tinygpt eval ... --json` as a user runs it, with default arguments otherwise."""
    result = subprocess.run([sys.executable, "-m", "tinygpt", "eval", *args, "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_train_to_a_usable_model(corpus, tmp_path):
    train, valid = corpus
    out = tmp_path / "run"
    result = train_hf(*TINY, "--train-file", str(train), "--validation-file", str(valid), "--output-dir", str(out),
                      "--max-steps", "12", "--eval_steps", "6", "--save_steps", "6", "--logging_steps", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["training"]["global_step"] == 12
    assert summary["eval"]["eval_bits_per_byte"] > 0 and summary["eval"]["eval_perplexity"] > 1
    assert summary["parameters"]["total"] == AutoModelForCausalLM.from_pretrained(out).num_parameters()
    from tinygpt.training import DEFAULT_PROMPTS

    assert [s["prompt"] for s in summary["samples"]] == DEFAULT_PROMPTS and "sample stories at step 6" in result.stdout
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("model.safetensors", "generation_config.json", "tokenizer.json", "configuration_tinygpt.py"):
        assert (out / name).is_file(), name
    assert all((c / "checkpoint_complete").is_file() for c in out.glob("checkpoint-*"))
    generator = pipeline("text-generation", model=str(out))
    assert generator("Once upon a time", max_new_tokens=5)[0]["generated_text"].startswith("Once upon a time")
    # the model has exactly the positions it was trained on, and evaluation defaults to them
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.max_position_embeddings == summary["data"]["block_size"] == 64
    assert model.config.use_cache
    figures = tinygpt_eval("--model", str(out), "--data", str(valid), "--consistency")
    assert figures["stories"] == summary["eval"]["eval_stories"] == 60 and figures["block_size"] == 64
    for name in ("loss", "bits_per_byte"):  # one evaluation code path: the same number (the issue asks for 1%)
        assert figures[name] == pytest.approx(summary["eval"][f"eval_{name}"], rel=1e-4)
    assert figures["consistency"]["correct"] == summary["consistency"]["correct"]
    assert summary["consistency"]["items"] >= 60


@pytest.mark.slow
def test_a_time_budget_ends_the_run_in_time_with_its_schedule_complete(corpus, tmp_path):
    """The whole process, tokenizer and final evaluation included, ends within --time_budget, and the learning
    rate has come down to (nearly) zero at the last step: the cosine was planned for the steps that fit."""
    train, valid = corpus
    out = tmp_path / "run"
    budget_s = 40
    started = time.time()
    result = train_hf(*TINY, "--train_file", str(train), "--validation_file", str(valid), "--output_dir", str(out),
                      "--time_budget", str(budget_s / 60), "--warmup_steps", "20", "--eval_steps", "0.3",
                      "--save_steps", "0.5", "--logging_steps", "1", "--muon")
    elapsed = time.time() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert elapsed <= budget_s * 1.03, f"{elapsed:.1f} s for a {budget_s} s budget"
    summary = json.loads((out / "training_summary.json").read_text())
    decision = summary["time_budget"]
    assert decision["planned_steps"] == summary["training"]["global_step"] > 100
    first = decision.get("first_planned_steps", decision["planned_steps"])  # the plan may follow the speed
    assert f"-> {first:,} steps in all" in result.stdout
    if first != decision["planned_steps"]:
        assert f"{first:,} -> {decision['planned_steps']:,} steps" in result.stdout
    state = json.loads(max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
                       .joinpath("trainer_state.json").read_text())
    rates = [e["learning_rate"] for e in state["log_history"] if "learning_rate" in e]
    assert max(rates) == pytest.approx(3e-3, rel=0.01) and rates[-1] < 0.02 * max(rates)
    assert summary["training"]["wall_time_s"] <= budget_s
    speed = summary["throughput"]  # the run's model FLOP/s against this machine's matmul peak
    assert speed["tokens_per_s"] > 0 and 0 < speed["share_of_peak"] < 1.5 and speed["precision"] == "float32"
    assert summary["environment"]["cpu"] and summary["environment"]["fast_bfloat16"] in (True, False)
    assert summary["environment"]["tinygpt"] and summary["hyperparameters"]["max_steps"] == -1  # unset, no placeholder
    assert str(tmp_path) not in json.dumps(summary) and "--train_file <train_file>" in summary["command"]


@pytest.mark.slow
def test_stories_apart_trains_and_evaluates_each_story_alone(corpus, tmp_path):
    """--stories_apart: the training batches read each story alone (the first step's loss is not the packed
    reading's, from the same weights and data), and the run's evaluation is `tinygpt eval --stories-apart`."""
    train, valid = corpus
    summaries = {}
    for name, apart in (("together", []), ("apart", ["--stories_apart"])):
        out = tmp_path / name
        result = train_hf(*TINY, "--train_file", str(train), "--validation_file", str(valid), "--output_dir", str(out),
                          "--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no", *apart)
        assert result.returncode == 0, result.stderr[-3000:]
        summaries[name] = json.loads((out / "training_summary.json").read_text())
    first = {name: json.loads((tmp_path / name / "trainer_state.json").read_text())["log_history"][0]["loss"]
             for name in summaries}
    assert first["apart"] != pytest.approx(first["together"], rel=1e-4)
    assert summaries["apart"]["data"]["stories_apart"] and not summaries["together"]["data"]["stories_apart"]
    figures = tinygpt_eval("--model", str(tmp_path / "apart"), "--data", str(valid), "--stories-apart")
    assert figures["bits_per_byte"] == pytest.approx(summaries["apart"]["eval"]["eval_bits_per_byte"], rel=1e-4)
    packed = tinygpt_eval("--model", str(tmp_path / "apart"), "--data", str(valid))
    assert packed["bits_per_byte"] != pytest.approx(figures["bits_per_byte"], rel=1e-4)


def test_data_formats_and_held_out_split(corpus, tmp_path):
    train, _ = corpus
    stories = read_stories(train)
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("".join(json.dumps({"story": s, "id": i}) + "\n" for i, s in enumerate(stories)))
    import datasets

    datasets.Dataset.from_dict({"text": stories}).to_parquet(str(tmp_path / "train.parquet"))
    folder = tmp_path / "hub_like"
    folder.mkdir()
    datasets.Dataset.from_dict({"text": stories[:300]}).to_json(str(folder / "train.jsonl"))
    datasets.Dataset.from_dict({"text": stories[300:]}).to_json(str(folder / "validation.jsonl"))
    for args in (DataArguments(train_file=[str(train)]), DataArguments(train_file=[str(jsonl)], text_column="story"),
                 DataArguments(train_file=[str(tmp_path / "train.parquet")])):
        raw = load_raw_datasets(args, seed=0)
        assert len(raw["train"]) + len(raw["validation"]) == 400 and len(raw["validation"]) == 8  # 2% held out
        assert raw["train"].column_names == ["text"]
    raw = load_raw_datasets(DataArguments(dataset_name=str(folder)))  # the load_dataset(...) path, on local data
    assert (len(raw["train"]), len(raw["validation"])) == (300, 100)
    streamed = load_raw_datasets(DataArguments(train_file=[str(train)], streaming=True, validation_split_percentage=1))
    assert next(iter(streamed["validation"]))["text"] == stories[0]


def test_packing_padding_and_the_collator(corpus, tokenizer_dir):
    train, valid = corpus
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    raw = load_raw_datasets(DataArguments(train_file=[str(train)], validation_file=[str(valid)]))
    packed = tokenize_for_training(raw["train"], tokenizer, block_size=64)
    assert packed.column_names == ["input_ids"] and packed.features["input_ids"].feature.dtype == "uint16"
    assert {len(row) for row in packed["input_ids"]} == {64}
    stream = [i for s in read_stories(train)[:1000] for i in tokenizer(s).input_ids + [tokenizer.eos_token_id]]
    assert packed[0]["input_ids"] == stream[:64] and packed[1]["input_ids"] == stream[64:128]
    batch = CausalLMCollator(tokenizer.pad_token_id)([packed[0], packed[1]])
    assert set(batch) == {"input_ids", "labels"} and batch["input_ids"].dtype == torch.long
    assert batch["input_ids"].tolist() == [stream[:64], stream[64:128]] and torch.equal(batch["labels"], batch["input_ids"])
    rows = tokenize_for_training(raw["train"], tokenizer, block_size=64, packing=False)
    assert len(rows) == 400 and max(len(r) for r in rows["input_ids"]) <= 64
    first = rows[0]["input_ids"]
    assert first[-1] == tokenizer.eos_token_id or len(first) == 64
    short, long = {"input_ids": rows[0]["input_ids"][:20]}, rows[1]  # a story shorter than the block
    padded = CausalLMCollator(tokenizer.pad_token_id)([short, long])
    n = len(short["input_ids"])
    assert padded["attention_mask"][0].tolist() == [1] * n + [0] * (len(long["input_ids"]) - n)
    assert padded["labels"][0, n:].eq(-100).all() and padded["labels"][1].ne(-100).all()


def test_bad_input_gives_clear_errors(corpus, tokenizer_dir, tmp_path):
    train, valid = corpus
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bad.txt").write_bytes(b"Once upon a time\nshe said \xe9t\xe9\n<|endoftext|>\n")
    (tmp_path / "fields.jsonl").write_text('{"story": "x"}\n')
    TinyGPTForCausalLM(TinyGPTConfig(vocab_size=501, max_position_embeddings=64, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2)).save_pretrained(tmp_path / "small")
    cases = [(["--train_file", str(tmp_path / "missing.txt")], "missing.txt: no such file"),
             (["--train_file", str(tmp_path / "empty.txt")], "empty.txt: the file is empty"),
             (["--train_file", str(tmp_path / "bad.txt")], "bad.txt: not valid UTF-8 at line 2"),
             (["--train_file", str(tmp_path / "fields.jsonl")], "no 'text' field"),
             (["--train_file", str(train), "--block_size", "1000", "--init_from", str(tmp_path / "small")],
              "--block_size 1000 must be between 2 and the model's max_position_embeddings (64)"),
             (["--train_file", str(train), "--preset", "huge"], "unknown preset 'huge'"),
             (["--train_file", str(train), "--config_overrides", "hiden_size=256"],
              "unknown TinyGPTConfig argument(s): 'hiden_size' (did you mean 'hidden_size'?)"),
             (["--train_file", str(train), "--config_overrides", "max_position_embeddings=128"],
              "--block_size 64 and max_position_embeddings=128 differ"),
             (["--train_file", str(train), "--time_budget", "0"], "--time_budget must be a positive number of minutes")]
    for args, message in cases:
        result = train_hf(*TINY, "--validation_file", str(valid), "--output_dir", str(tmp_path / "out"),
                          "--tokenizer", str(tokenizer_dir), *args)
        assert result.returncode == 2 and message in result.stderr, (message, result.stderr[-2000:])
        assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_kill_9_then_resume_finishes_with_no_partial_checkpoint(corpus, tokenizer_dir, tmp_path):
    """With Muon, whose two inner optimizers' states must come back too."""
    train, valid = corpus
    out = tmp_path / "run"
    args = [*TINY, "--train_file", str(train), "--validation_file", str(valid), "--output_dir", str(out), "--muon",
            "--tokenizer", str(tokenizer_dir), "--max_steps", "1000", "--save_steps", "20",
            "--eval_steps", "100", "--logging_steps", "5", "--save_total_limit", "3"]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(ROOT / "train_hf.py"), *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not any(out.glob("checkpoint-*/checkpoint_complete")):  # older ones rotate away
        assert process.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "training_summary.json").exists()
    # what a kill in the middle of a save leaves: a checkpoint folder with part of its files
    last = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    partial = out / f"checkpoint-{last + 20}"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\x00" * 100)
    refused = train_hf(*args)
    assert refused.returncode == 2 and "pass --resume" in refused.stderr
    resumed = train_hf(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "removing" in resumed.stdout and partial.name in resumed.stdout
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["training"]["global_step"] == 1000 and summary["training"]["max_steps"] == 1000
    assert int(summary["training"]["resumed_from"].rsplit("-", 1)[1]) >= 20
    assert all((c / "checkpoint_complete").is_file() for c in out.glob("checkpoint-*"))


def _scheduler_plan(checkpoint: Path):
    """The learning-rate schedule saved in a checkpoint (tinygpt.budget.Schedule's attributes, with the
    scheduler's state), the peak learning rate, and the rate the next step trains with."""
    from tinygpt.budget import Schedule

    state = torch.load(checkpoint / "scheduler.pt", weights_only=False)
    saved = state["lr_lambdas"][0]
    schedule = Schedule(saved["name"], saved["warmup"], saved["total_steps"], saved["kwargs"])
    return schedule, state["base_lrs"][0], state["_last_lr"][0]


@pytest.mark.slow
def test_a_resumed_budgeted_run_finishes_the_plan_of_its_checkpoint(corpus, tokenizer_dir, tmp_path):
    """--time_budget, kill -9 after the first checkpoint, --resume: the run ends at the step count its checkpoint
    planned, and every step after the resume has the learning rate that plan gives (a cosine, which depends on
    the step count at every step), not a new budget's."""
    train, valid = corpus
    out = tmp_path / "run"
    args = [*TINY, "--train_file", str(train), "--validation_file", str(valid), "--output_dir", str(out),
            "--tokenizer", str(tokenizer_dir), "--time_budget", "0.75", "--lr_scheduler_type", "cosine",
            "--warmup_steps", "10", "--save_steps", "60", "--eval_steps", "0.5", "--logging_steps", "1",
            "--save_total_limit", "1"]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(ROOT / "train_hf.py"), *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not any(out.glob("checkpoint-*/checkpoint_complete")):
        assert process.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    checkpoint = next(c for c in out.glob("checkpoint-*") if (c / "checkpoint_complete").is_file())
    killed_at = int(checkpoint.name.split("-")[1])
    schedule, peak, next_rate = _scheduler_plan(checkpoint)
    assert killed_at < schedule.total_steps < 100_000  # a plan, with steps left to train
    resumed = train_hf(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["training"]["global_step"] == schedule.total_steps
    logged = {entry["step"]: entry["learning_rate"] for entry in
              json.loads((out / "trainer_state.json").read_text())["log_history"] if "learning_rate" in entry}
    after = [step for step in logged if step > killed_at]
    assert len(after) == schedule.total_steps - killed_at
    # Trainer logs at step s the rate step s trained with: the schedule's factor at s - 1. The first step after the
    # checkpoint trains with the rate the scheduler had already set when the plan last moved (as the uninterrupted
    # run would: tinygpt.budget, _set_total), which the checkpoint keeps.
    assert logged[killed_at + 1] == pytest.approx(next_rate, rel=1e-9, abs=1e-15)
    for step in after[1:]:
        assert logged[step] == pytest.approx(peak * schedule(step - 1), rel=1e-9, abs=1e-15), step


def _losses(folder: Path) -> list[float]:
    state = json.loads(max(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
                       .joinpath("trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(corpus, tokenizer_dir, tmp_path, launcher):
    train, valid = corpus
    common = [*TINY, "--train_file", str(train), "--validation_file", str(valid), "--tokenizer",
              str(tokenizer_dir), "--max_steps", "20", "--logging_steps", "1", "--save_steps", "20",
              "--max_train_samples", "12",  # about 15 steps an epoch: the steps after it train on a new packing
              "--dataloader_drop_last", "true",  # an epoch's last, short batch is split unlike one process's
              "--eval_steps", "100", "--train_sampling_strategy", "sequential"]
    single = train_hf(*common, "--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "4")
    assert single.returncode == 0, single.stderr[-3000:]
    launch = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
              if launcher == "torchrun" else
              [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--main_process_port", "29518", "--mixed_precision", "no",
               "--dynamo_backend", "no"])  # multi_gpu = the torchrun launcher; processes run on the CPU here
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    double = subprocess.run([*launch, str(ROOT / "train_hf.py"), *common, "--output_dir", str(tmp_path / "two"),
                             "--per_device_train_batch_size", "2", "--ddp_backend", "gloo"], capture_output=True, text=True, timeout=600,
                            env=env)
    assert double.returncode == 0, double.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "training_summary.json").read_text())
    assert summary["training"]["world_size"] == 2 and summary["training"]["epochs"] > 1
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 20
    # the same 4 blocks per step, split over two processes: equal up to float reduction order
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=1e-3, atol=1e-3)


@needs_data
@pytest.mark.slow
def test_the_cpu_recipe_under_torchrun_follows_one_plan(tmp_path):
    """`--preset cpu --time_budget 2` on the shared data with 2 gloo processes: process 0 measures the shapes and
    bf16 and plans the steps, the other follows (tinygpt.ranks); one saved model, the same step count on both."""
    out = tmp_path / "run"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29519", str(ROOT / "train_hf.py"), "--preset", "cpu", "--time_budget", "2",
                          "--train_file", str(SHARED_DATA / "train.txt"), "--tokenizer_source", gpt2_source(),
                          "--output_dir", str(out), "--ddp_backend", "gloo", "--disable_tqdm", "true"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("shape for this machine") == 1 and run.stdout.count("steps in all") == 1
    summary = json.loads((out / "training_summary.json").read_text())
    steps = summary["training"]["global_step"]
    assert summary["training"]["world_size"] == 2 and steps == summary["time_budget"]["planned_steps"] > 0
    assert sorted(re.findall(r"process \d of 2: trained \d+ steps", run.stdout)) == [
        f"process {rank} of 2: trained {steps} steps" for rank in (0, 1)]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.hidden_size == int(summary["shape"]["chosen"].split("x")[0])


def test_streaming_packs_the_same_blocks(corpus, tokenizer_dir):
    train, valid = corpus
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    args = dict(train_file=[str(train)], validation_file=[str(valid)])
    loaded = tokenize_for_training(load_raw_datasets(DataArguments(**args))["train"], tokenizer, block_size=64)
    streamed = tokenize_for_training(load_raw_datasets(DataArguments(**args, streaming=True))["train"], tokenizer,
                                     block_size=64)
    blocks = [row["input_ids"] for row in streamed.take(5)]
    assert blocks == loaded["input_ids"][:5]


@pytest.mark.slow
def test_the_compiled_bf16_step_tracks_the_float32_step():
    """What --bf16_if_fast trains with on a CPU with bf16 units (the model compiled with its eager attention, bf16
    autocast) gives the loss and gradients of the plain float32 step (SDPA, not compiled), to bf16's precision;
    with global and local layers, and the wide init that makes the unscaled scores large."""
    from types import SimpleNamespace

    from conftest import tiny_config
    from tinygpt.optim import prepare_for_cpu_training

    torch.manual_seed(0)
    reference = TinyGPTForCausalLM(tiny_config()).train()
    trained = TinyGPTForCausalLM(tiny_config()).train()
    trained.load_state_dict(reference.state_dict())
    prepare_for_cpu_training(trained, SimpleNamespace(torch_compile=True, use_cpu=True))
    assert trained.config._attn_implementation == "eager"
    compiled = torch.compile(trained)
    ids = torch.randint(0, 96, (4, 48), generator=torch.Generator().manual_seed(0))
    loss = reference(input_ids=ids, labels=ids).loss
    loss.backward()
    for _ in range(2):  # the second call runs the compiled code as compiled, not while compiling
        trained.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16_loss = compiled(input_ids=ids, labels=ids).loss
        bf16_loss.backward()
    assert abs(bf16_loss.item() - loss.item()) < 0.02 * loss.item()
    for (name, p), q in zip(reference.named_parameters(), trained.parameters()):
        similarity = torch.nn.functional.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0)
        assert similarity > 0.98, (name, similarity)
