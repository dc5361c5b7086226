"""The run summary, `training_summary.json`: written at the end of training (tinygpt.training), read by
publishing (the model card in tinygpt.hub). Its fields are defined here and nowhere else."""

import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

HYPERPARAMETERS = ("learning_rate", "embedding_lr_multiplier", "head_lr_multiplier", "adam_beta1", "adam_beta2",
                   "weight_decay", "max_grad_norm", "warmup_steps", "lr_scheduler_type", "lr_scheduler_kwargs",
                   "per_device_train_batch_size", "gradient_accumulation_steps", "max_steps", "num_train_epochs",
                   "time_budget", "muon", "muon_momentum", "bf16", "torch_compile", "seed")


def portable_command(argv: list[str]) -> str:
    """The command line as a stranger can run it: paths under the working folder relative to it, other absolute
    paths replaced by their option's role (`--tokenizer_source <tokenizer_source>`), so no user or host name is
    recorded or published."""
    words = []
    for i, word in enumerate(argv):
        role = argv[i - 1].lstrip("-").replace("-", "_") if i and argv[i - 1].startswith("--") else "path"
        word = portable_path(word, role)
        words.append(shlex.quote(word) if word != shlex.quote(word) and not word.startswith("<") else word)
    return " ".join(words)


def portable_path(value, role: str):
    """An absolute path as `portable_command` writes it; anything else unchanged (lists item by item)."""
    if isinstance(value, (list, tuple)):
        return [portable_path(item, role) for item in value]
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    path, cwd = Path(value).resolve(), Path.cwd().resolve()
    return str(path.relative_to(cwd)) if path.is_relative_to(cwd) else f"<{role}>"


def _version() -> str | None:
    try:
        return importlib.metadata.version("tinygpt")
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """The commit of the package's checkout, with "+changes" when its files differ from it; None outside git."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=source, capture_output=True, text=True,
                                timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "."], cwd=source,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


@dataclass
class RunSummary:
    command: str = ""
    recipe: str = ""
    model_preset: str = ""
    parameters: dict = field(default_factory=dict)  # the seed's table: embedding / blocks / output / total
    model_config: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)  # files or dataset, block size, packing
    training: dict = field(default_factory=dict)  # steps, tokens seen, losses, times
    eval: dict = field(default_factory=dict)  # the final evaluation on all validation stories (eval_loss, ...)
    consistency: dict = field(default_factory=dict)  # tinygpt.consistency.evaluate_consistency
    time_budget: dict | None = None  # what --time_budget decided (tinygpt.budget.TimeBudget.decision)
    shape: dict | None = None  # the measured candidates and the choice of --auto_shape (tinygpt.shape)
    throughput: dict = field(default_factory=dict)  # tokens/s, model FLOP/s and share of the peak (tinygpt.throughput)
    samples: list = field(default_factory=list)  # stories for the fixed prompts at the last evaluation
    hyperparameters: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)

    FILE: ClassVar[str] = "training_summary.json"

    @classmethod
    def of_run(cls, argv, model_args, data_args, args, trainer, result, metrics, started, checkpoint, block_size,
               samples, consistency, time_budget, step_timer=None, shape=None) -> "RunSummary":
        import torch
        import transformers

        from .parameters import parameter_table
        from .throughput import machine

        model, state = trainer.model, trainer.state
        tokens_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        return cls(
            command=portable_command([Path(sys.argv[0]).name] + list(argv)),
            recipe=model_args.recipe, model_preset=model_args.model_preset,
            parameters=dict(parameter_table(model)) if hasattr(model, "model") else {"total": model.num_parameters()},
            model_config=model.config.to_diff_dict(),
            data={"train_file": portable_path(data_args.train_file, "train_file"),
                  "validation_file": portable_path(data_args.validation_file, "validation_file"),
                  "dataset": None if data_args.train_file else data_args.dataset_name, "block_size": block_size,
                  "packing": data_args.packing, "stories_apart": data_args.stories_apart,
                  "validation_split_percentage": data_args.validation_split_percentage},
            training={"global_step": state.global_step, "max_steps": state.max_steps, "epochs": state.epoch,
                      "train_loss": result.training_loss, "tokens_seen": state.global_step * tokens_per_step * block_size,
                      "train_runtime_s": result.metrics.get("train_runtime"), "wall_time_s": time.time() - started,
                      "resumed_from": checkpoint and Path(checkpoint).name, "bf16": args.bf16, "world_size": args.world_size},
            eval=metrics, consistency=consistency, time_budget=time_budget, samples=samples, shape=shape,
            throughput=step_timer.report(model, tokens_per_step * block_size, block_size, args.bf16) if step_timer else {},
            hyperparameters={**{k: v for k, v in args.to_dict().items() if k in HYPERPARAMETERS},
                             "zero_init_residual": model_args.zero_init_residual},
            environment={"tinygpt": _version(), "git_commit": _git_commit(), "torch": torch.__version__,
                         "transformers": transformers.__version__,
                         "python": platform.python_version(), "cuda": torch.cuda.is_available(), **machine()})

    def evaluated_on(self) -> tuple[str, str]:
        """(the split's name for a model-index, the data in words) of the run's held-out figures (`eval`): the
        validation files, the dataset's validation split, or the part of the training data held out, which is not
        the dataset's validation split and must not be published as one."""
        data = self.data or {}
        if data.get("validation_file"):
            names = ", ".join(Path(f).name for f in data["validation_file"])
            return names, f"the validation file {names}"
        share = f"{data.get('validation_split_percentage', 2.0):g}%"
        if data.get("dataset"):
            return "validation", (f"{data['dataset']}'s validation split (or, for a dataset without one, {share} "
                                  "of its train split held out)")
        names = ", ".join(Path(f).name for f in data.get("train_file") or [])
        return f"held-out {share} of {names}", f"{share} of the stories in {names} held out from training"

    def write(self, folder) -> Path:
        path = Path(folder) / self.FILE
        path.write_text(json.dumps(asdict(self), indent=2, default=str))
        return path

    @classmethod
    def read(cls, folder) -> "RunSummary | None":
        """The summary in a model folder, or None if the folder has none (a model not trained by train_hf.py)."""
        path = Path(folder) / cls.FILE
        if not path.is_file():
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})
