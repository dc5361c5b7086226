"""Pretraining and fine-tuning with Trainer: arguments, presets, model and tokenizer set-up, the run itself.

`train_hf.py` at the repository root is the entry point; it only calls `run_training`.
"""

import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import (AutoConfig, AutoTokenizer, DataCollatorForSeq2Seq, GenerationConfig, HfArgumentParser,
                          Trainer, set_seed, TrainingArguments, default_data_collator)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .callbacks import COMPLETE_MARKER, CheckpointCompleteCallback, SampleStoriesCallback, plot_losses
from .configuration_tinygpt import PRESETS, TinyGPTConfig
from .convert import gpt_neo_to_tinygpt, shrink_vocab
from .data import DataArguments, DataFileError, load_raw_datasets, tokenize_datasets
from .modeling_tinygpt import TinyGPTForCausalLM
from .parameters import parameter_table
from .tokenizer import DEFAULT_SOURCE, ID_MAP_KEY, prune_tokenizer, train_tokenizer

SUMMARY_FILE = "training_summary.json"
DEFAULT_PROMPTS = ["Once upon a time", "Lily and Ben went to the park.", "The little dog was sad because"]

# A recipe is a model preset plus training arguments; anything given on the command line wins.
RECIPES = {
    # The seed's run (for a GPU): 8K vocabulary, batch 16 x 5 accumulation, one epoch of TinyStories.
    "tinystories-41m": {"model": "tinystories-41m", "argv": [
        "--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "5", "--num_train_epochs", "1",
        "--block_size", "512"]},
    # ~30 minutes on 2 CPU cores (see README for the measured run).
    "cpu": {"model": "tinystories-cpu", "argv": [
        "--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "1", "--block_size", "256",
        "--max_steps", "2800", "--learning_rate", "2e-3", "--warmup_steps", "200", "--lr_scheduler_type", "cosine",
        "--eval_steps", "500", "--save_steps", "500", "--logging_steps", "50", "--per_device_eval_batch_size", "32",
        "--eval_subset_blocks", "200", "--bf16"]},
}


@dataclass
class ModelArguments:
    preset: str = field(default="tinystories-41m", metadata={
        "help": f"training recipe {sorted(RECIPES)} or model preset {sorted(PRESETS)}"})
    config_overrides: str | None = field(default=None, metadata={
        "help": "model config changes, e.g. 'hidden_size=256,num_hidden_layers=4'"})
    init_from: str | None = field(default=None, metadata={
        "help": "continue from a TinyGPT or GPT-Neo checkpoint (folder or Hub id) instead of a fresh model"})
    tokenizer: str | None = field(default=None, metadata={"help": "an existing tokenizer folder"})
    build_tokenizer: str = field(default="prune", metadata={
        "help": "without --tokenizer, build one into OUTPUT_DIR/tokenizer: prune (GPT-Neo's top K) or train"})
    tokenizer_vocab_size: int = field(default=8000, metadata={"help": "regular tokens of a built tokenizer"})
    tokenizer_source: str = field(default=DEFAULT_SOURCE, metadata={"help": "GPT-Neo's tokenizer, for prune"})
    resume: bool = field(default=False, metadata={"help": "continue from the last complete checkpoint"})
    sample_prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    sample_max_new_tokens: int = 80


@dataclass
class TinyGPTTrainingArguments(TrainingArguments):
    """TrainingArguments with the TinyStories-33M recipe as defaults."""

    output_dir: str = field(default="runs/tinygpt", metadata={"help": "checkpoints and the final model"})
    learning_rate: float = 5e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    weight_decay: float = 0.1
    warmup_steps: float = 0.02
    lr_scheduler_type: str = "cosine"
    eval_strategy: str = "steps"
    eval_steps: float = 500
    save_steps: float = 500
    save_total_limit: int | None = 2
    logging_steps: float = 50
    use_cpu: bool = not torch.cuda.is_available()  # lets --bf16 mean CPU autocast on a machine without a GPU


def parse_arguments(argv: list[str]):
    """(model, data, training) arguments, with the chosen recipe's values under the command line's."""
    preset = ModelArguments.preset
    for i, arg in enumerate(argv):
        if arg == "--preset" and i + 1 < len(argv):
            preset = argv[i + 1]
        elif arg.startswith("--preset="):
            preset = arg.split("=", 1)[1]
    if preset not in RECIPES and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose a recipe {sorted(RECIPES)} or a model {sorted(PRESETS)}")
    recipe_argv = RECIPES[preset]["argv"] if preset in RECIPES else []
    parser = HfArgumentParser((ModelArguments, DataArguments, TinyGPTTrainingArguments))
    return parser.parse_args_into_dataclasses(args=recipe_argv + list(argv))


# ----------------------------------------------------------------------------- set-up


def prepare_output_dir(output_dir: str, resume: bool) -> str | None:
    """The checkpoint to resume from. Checkpoints without the completion marker were interrupted while being
    written: they are removed, so a resume never starts from half a checkpoint."""
    out = Path(output_dir)
    checkpoints = sorted(out.glob(f"{PREFIX_CHECKPOINT_DIR}-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    if checkpoints and not resume:
        raise ValueError(f"{out} already holds checkpoints: pass --resume to continue, or choose another --output_dir")
    complete = []
    for checkpoint in checkpoints:
        if (checkpoint / COMPLETE_MARKER).is_file():
            complete.append(checkpoint)
        elif int(os.environ.get("RANK", "0")) == 0:
            print(f"removing {checkpoint}: written only in part (the run was interrupted while saving it)")
            shutil.rmtree(checkpoint)
    return str(complete[-1]) if complete else None


def load_or_build_tokenizer(model_args: ModelArguments, data_args: DataArguments, raw, out: Path, args):
    if model_args.tokenizer:
        return AutoTokenizer.from_pretrained(model_args.tokenizer)
    folder = out / "tokenizer"
    with args.main_process_first(desc="building the tokenizer"):
        if not (folder / "tokenizer.json").is_file():
            build = {"prune": prune_tokenizer, "train": train_tokenizer}.get(model_args.build_tokenizer)
            if build is None:
                raise ValueError(f"--build_tokenizer must be prune or train, got {model_args.build_tokenizer!r}")
            with tempfile.TemporaryDirectory() as tmp:
                corpus = _tokenizer_corpus(data_args, raw, Path(tmp))
                build(corpus, vocab_size=model_args.tokenizer_vocab_size, source=model_args.tokenizer_source,
                      out_dir=folder)
    return AutoTokenizer.from_pretrained(folder)


def _tokenizer_corpus(data_args, raw, tmp: Path, limit: int = 200_000) -> list:
    """.txt training files as they are; other data written out (up to `limit` stories) in the .txt format."""
    if data_args.train_file and all(f.endswith(".txt") for f in data_args.train_file):
        return list(data_args.train_file)
    path = tmp / "corpus.txt"
    with path.open("w", encoding="utf-8") as handle:
        for row in raw["train"].take(limit):
            handle.write(row["text"].strip() + "\n<|endoftext|>\n")
    return [path]


def build_model(model_args: ModelArguments, tokenizer) -> TinyGPTForCausalLM:
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    if model_args.init_from:
        model = _load_checkpoint(model_args.init_from, tokenizer)
        model.config.update(special)
        return model
    model_preset = RECIPES[model_args.preset]["model"] if model_args.preset in RECIPES else model_args.preset
    overrides = _parse_overrides(model_args.config_overrides)
    config = TinyGPTConfig.from_preset(model_preset, **{**overrides, "vocab_size": len(tokenizer), **special})
    return TinyGPTForCausalLM(config)


def _load_checkpoint(source: str, tokenizer) -> TinyGPTForCausalLM:
    config = AutoConfig.from_pretrained(source)
    if config.model_type == "gpt_neo":
        model = gpt_neo_to_tinygpt(source)
    elif config.model_type == "tinygpt":
        model = TinyGPTForCausalLM.from_pretrained(source)
    else:
        raise ValueError(f"--init_from {source}: a {config.model_type} model, not TinyGPT or GPT-Neo")
    if model.config.vocab_size != len(tokenizer):
        if ID_MAP_KEY not in tokenizer.init_kwargs:
            raise ValueError(f"--init_from {source} has {model.config.vocab_size:,} tokens but the tokenizer has "
                             f"{len(tokenizer):,}; use that model's tokenizer or a pruned one (shrink_vocab)")
        model = shrink_vocab(model, tokenizer)  # GPT-Neo vocabulary -> the pruned one
    return model


def _parse_overrides(text: str | None) -> dict:
    overrides = {}
    for item in filter(None, (text or "").split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value.strip()
    return overrides


# ----------------------------------------------------------------------------- the trainer


class TinyGPTTrainer(Trainer):
    """Trainer whose evaluation also reports perplexity and bits per byte of the validation text."""

    def __init__(self, *args, tokens_per_byte: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokens_per_byte = tokens_per_byte

    def evaluation_loop(self, *args, **kwargs):
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", "eval")
        loss = output.metrics.get(f"{prefix}_loss")
        if loss is not None:
            output.metrics[f"{prefix}_perplexity"] = math.exp(min(loss, 50.0))
            output.metrics[f"{prefix}_bits_per_byte"] = loss / math.log(2) * self.tokens_per_byte
        return output


def run_training(argv: list[str]) -> dict:
    model_args, data_args, args = parse_arguments(argv)
    started = time.time()
    out = Path(args.output_dir)
    checkpoint = prepare_output_dir(args.output_dir, model_args.resume)
    raw = load_raw_datasets(data_args, seed=args.seed)
    tokenizer = load_or_build_tokenizer(model_args, data_args, raw, out, args)
    set_seed(args.seed)  # the fresh model's weights depend on the seed alone, on every process
    model = build_model(model_args, tokenizer)
    block_size = data_args.block_size or model.config.max_position_embeddings
    if not 2 <= block_size <= model.config.max_position_embeddings:
        raise ValueError(f"--block_size {block_size} must be between 2 and the model's max_position_embeddings "
                         f"({model.config.max_position_embeddings})")
    with args.main_process_first(desc="tokenizing"):
        data, stats = tokenize_datasets(raw, tokenizer, block_size, data_args.packing,
                                        data_args.preprocessing_num_workers)
    collator = default_data_collator if data_args.packing else DataCollatorForSeq2Seq(tokenizer, padding=True)
    samples = SampleStoriesCallback(tokenizer, model_args.sample_prompts, model_args.sample_max_new_tokens)
    validation = data["validation"]
    if data_args.eval_subset_blocks and not data_args.streaming:
        validation = validation.select(range(min(data_args.eval_subset_blocks, len(validation))))
    trainer = TinyGPTTrainer(
        model=model, args=args, train_dataset=data["train"], eval_dataset=validation,
        data_collator=collator, processing_class=tokenizer, tokens_per_byte=stats["tokens"] / stats["bytes"],
        callbacks=[CheckpointCompleteCallback(), samples])
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = trainer.evaluate(data["validation"])  # the whole validation set
    model.generation_config = GenerationConfig(do_sample=True, temperature=0.7, top_k=50, max_new_tokens=200,
                                               bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    trainer.save_model(str(out))  # model.safetensors, config.json + code files, tokenizer, generation_config
    if not trainer.is_world_process_zero():
        return metrics
    summary = {
        "command": " ".join([Path(sys.argv[0]).name] + list(argv)),
        "preset": model_args.preset,
        "parameters": dict(parameter_table(model)),
        "model_config": model.config.to_diff_dict(),
        "data": {"train_file": data_args.train_file, "validation_file": data_args.validation_file,
                 "dataset": None if data_args.train_file else data_args.dataset_name, "block_size": block_size,
                 "packing": data_args.packing, "validation_tokens_per_byte": stats["tokens"] / stats["bytes"]},
        "training": {"global_step": trainer.state.global_step, "max_steps": trainer.state.max_steps,
                     "epochs": trainer.state.epoch, "train_loss": result.training_loss,
                     "tokens_seen": trainer.state.global_step * args.per_device_train_batch_size
                     * args.gradient_accumulation_steps * args.world_size * block_size,
                     "train_runtime_s": result.metrics.get("train_runtime"), "wall_time_s": time.time() - started,
                     "resumed_from": checkpoint, "bf16": args.bf16, "world_size": args.world_size},
        "eval": metrics,
        "samples": samples.latest,
        "hyperparameters": {k: v for k, v in asdict(args).items() if k in (
            "learning_rate", "adam_beta1", "adam_beta2", "weight_decay", "warmup_steps", "lr_scheduler_type",
            "per_device_train_batch_size", "gradient_accumulation_steps", "max_steps", "num_train_epochs", "seed")},
        "environment": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "python": platform.python_version(), "cpus": os.cpu_count(),
                        "cuda": torch.cuda.is_available()},
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
    plot_losses(trainer.state.log_history, out / "loss.png")
    print(f"saved the model, tokenizer, {SUMMARY_FILE} and loss.png to {out}")
    return metrics


def main(argv=None) -> int:
    try:
        run_training(sys.argv[1:] if argv is None else argv)
    except (ValueError, DataFileError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
