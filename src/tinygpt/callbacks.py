"""Trainer callbacks of a TinyGPT run, and the loss plot drawn at its end."""

import json
import math
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .evaluation import evaluating

COMPLETE_MARKER = "checkpoint_complete"


class CheckpointCompleteCallback(TrainerCallback):
    """Marks a checkpoint folder complete once Trainer has written all of it. Trainer writes checkpoints in
    place, so a run killed while saving leaves a partial folder; `--resume` removes folders without the mark."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if folder.is_dir():
                (folder / COMPLETE_MARKER).write_text(json.dumps({"global_step": state.global_step}))


class RepackEachEpoch(TrainerCallback):
    """Tells a training dataset packed afresh at every epoch (`tinygpt.data.PackedStories`) which epoch begins,
    before its batches are drawn. Trainer's `set_epoch` goes to accelerate's data loader, which passes it on to
    the dataset only where the sampler has no `set_epoch` of its own (accelerate's seedable sampler has one);
    where both reach it they tell the same epoch."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch counts the epochs done: a whole number when an epoch begins (Trainer sets it to epoch +
        # steps / steps_in_epoch), a share of one when a checkpoint resumes within an epoch
        self.dataset.set_epoch(math.floor(state.epoch + 1e-6))


class SampleStoriesCallback(TrainerCallback):
    """At each evaluation, continue fixed prompts (sampled as the model's generation_config says, with a fixed
    seed, so runs compare) and log the stories: printed, and appended to OUTPUT_DIR/samples.jsonl."""

    def __init__(self, tokenizer, prompts: list[str], max_new_tokens: int = 80, seed: int = 0):
        self.tokenizer, self.prompts, self.max_new_tokens, self.seed = tokenizer, prompts, max_new_tokens, seed
        self.latest: list[dict] = []

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or model is None or not self.prompts:
            return
        limit = model.config.max_position_embeddings
        self.latest = []
        # fork_rng: keep the training run's random stream untouched
        with evaluating(model), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for prompt in self.prompts:
                ids = self.tokenizer(prompt, return_tensors="pt").input_ids.to(model.device)
                new = max(1, min(self.max_new_tokens, limit - ids.shape[1]))
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                     pad_token_id=self.tokenizer.eos_token_id)
                self.latest.append({"prompt": prompt, "story": self.tokenizer.decode(out[0], skip_special_tokens=True)})
        with open(Path(args.output_dir) / "samples.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": state.global_step, "samples": self.latest}) + "\n")
        print(f"\n--- sample stories at step {state.global_step} ---")
        for sample in self.latest:
            print(f"* {sample['story']}\n")


def plot_losses(log_history: list[dict], path) -> None:
    """Training and validation loss against steps, and validation bits per byte, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["step"], e["eval_loss"], e.get("eval_bits_per_byte")) for e in log_history if "eval_loss" in e]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        left.plot(*zip(*train), label="training loss", alpha=0.8)
    if evals:
        left.plot([e[0] for e in evals], [e[1] for e in evals], "o-", label="validation loss")
        right.plot([e[0] for e in evals], [e[2] for e in evals], "o-", color="tab:green")
    left.set(xlabel="step", ylabel="loss (nats/token)", title="loss")
    left.legend()
    right.set(xlabel="step", ylabel="bits per byte", title="validation bits per byte")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
