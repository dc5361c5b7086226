"""Pretraining and fine-tuning with Trainer: arguments, recipes, model and tokenizer set-up, the run itself.

`train_hf.py` at the repository root is the entry point; it only calls `run_training`.
"""

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from transformers import AutoConfig, AutoTokenizer, GenerationConfig, HfArgumentParser, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .arguments import parse_arguments_or_exit
from .budget import UNBOUNDED_STEPS, Schedule, TimeBudget, process_start_time
from .callbacks import COMPLETE_MARKER, CheckpointCompleteCallback, RepackEachEpoch, SampleStoriesCallback, plot_losses
from .configuration_tinygpt import PRESETS, TinyGPTConfig
from .consistency import evaluate_consistency, load_items
from .convert import gpt_neo_to_tinygpt, shrink_vocab
from .data import (CausalLMCollator, DataArguments, DataFileError, PackedStories, load_raw_datasets,
                   tokenize_for_training)
from .evaluation import evaluate_texts, utf8_bytes
from .modeling_tinygpt import TinyGPTForCausalLM
from .optim import (adamw_groups, build_muon_with_adamw, compile_pays, fast_bfloat16, keep_freed_memory,
                    prepare_for_cpu_training)
from .ranks import decided_by_rank_zero, is_deciding_process
from .shape import pick_shape
from .summary import RunSummary
from .throughput import StepTimer
from .tokenizer import DEFAULT_SOURCE, ID_MAP_KEY, prepare_to_ship, prune_tokenizer, train_tokenizer

# Sampled at every evaluation and kept in training_summary.json; the playground offers them as examples.
DEFAULT_PROMPTS = ["Once upon a time", "Lily and Ben went to the park.", "The little dog was sad because",
                   "Tom had a red ball. One day,"]
# How stories are sampled: saved in every trained model's generation_config.json, from which the sample stories
# during training, `tinygpt generate` and the playground read it.
STORY_SAMPLING = dict(do_sample=True, temperature=0.7, top_k=50, top_p=0.95, max_new_tokens=200)

# A recipe is a model preset plus training arguments; anything given on the command line wins.
RECIPES = {
    # The seed's run (for a GPU): 8K vocabulary, batch 16 x 5 accumulation, one epoch of TinyStories.
    "tinystories-41m": {"model": "tinystories-41m", "argv": [
        "--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "5", "--num_train_epochs", "1",
        "--block_size", "512"]},
    # 30 minutes on whatever machine runs it (docs/training.md: the measured run; BENCHMARKS.md: the choices).
    "cpu": {"model": "tinystories-cpu", "argv": [
        "--time_budget", "30", "--per_device_train_batch_size", "32", "--block_size", "256",
        "--learning_rate", "4e-3", "--adam_beta2", "0.99", "--warmup_steps", "30", "--lr_scheduler_type",
        "warmup_stable_decay",
        "--lr_scheduler_kwargs", '{"decay_ratio": 0.3}',
        "--eval_steps", "0.25", "--save_steps", "0.25", "--logging_steps", "10", "--per_device_eval_batch_size", "32",
        "--eval_subset_stories", "300", "--muon", "--bf16_if_fast", "--auto_shape", "96x6,128x6,160x8,192x8",
        "--zero_init_residual", "--embedding_lr_multiplier", "3"]},
}


@dataclass
class ModelArguments:
    recipe: str | None = field(default=None, metadata={
        "help": f"a training recipe, i.e. a model preset and training arguments: {sorted(RECIPES)} "
                "(default tinystories-41m, the seed's run)"})
    model_preset: str | None = field(default=None, metadata={
        "help": f"the model's shape, instead of the recipe's: {sorted(PRESETS)}"})
    preset: str | None = field(default=None, metadata={
        "help": "shorthand: --recipe NAME if NAME is a recipe, else --model_preset NAME"})
    config_overrides: str | None = field(default=None, metadata={
        "help": "model config changes, e.g. 'hidden_size=256,num_hidden_layers=4'"})
    auto_shape: str | None = field(default=None, metadata={
        "help": "with --time_budget: candidate shapes HIDDENxLAYERS,... measured at the start; the largest that "
                "the budget lets see enough tokens is trained (tinygpt.shape). --config_overrides or "
                "--model_preset on the command line win over it"})
    init_from: str | None = field(default=None, metadata={
        "help": "continue from a TinyGPT or GPT-Neo checkpoint (folder or Hub id) instead of a fresh model"})
    tokenizer: str | None = field(default=None, metadata={"help": "an existing tokenizer folder"})
    build_tokenizer: str = field(default="prune", metadata={
        "help": "without --tokenizer, build one into OUTPUT_DIR/tokenizer: prune (GPT-Neo's top K) or train"})
    tokenizer_vocab_size: int = field(default=8000, metadata={"help": "regular tokens of a built tokenizer"})
    tokenizer_source: str = field(default=DEFAULT_SOURCE, metadata={"help": "GPT-Neo's tokenizer, for prune"})
    zero_init_residual: bool = field(default=False, metadata={
        "help": "a fresh model's attention and MLP output projections start at zero (each block starts as the "
                "identity)"})
    resume: bool = field(default=False, metadata={"help": "continue from the last complete checkpoint"})
    sample_prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    sample_max_new_tokens: int = 80


@dataclass
class TinyGPTTrainingArguments(TrainingArguments):
    """TrainingArguments with the TinyStories-33M recipe as defaults, plus a time budget, Muon and bf16-if-fast."""

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
    time_budget: float | None = field(default=None, metadata={
        "help": "minutes for the whole run (tokenizer, data, training, final evaluation, saving): the number of "
                "steps is planned from the measured speed, and the learning-rate schedule ends with training"})
    muon: bool = field(default=False, metadata={
        "help": "torch.optim.Muon for the 2-D weights inside the blocks, AdamW for the rest (one learning rate)"})
    muon_momentum: float = field(default=0.95, metadata={
        "help": "with --muon: the momentum of Muon's (Nesterov) gradient average; AdamW's are --adam_beta1/2"})
    embedding_lr_multiplier: float = field(default=1.0, metadata={
        "help": "the token and position embeddings learn at this multiple of --learning_rate (AdamW)"})
    head_lr_multiplier: float = field(default=1.0, metadata={
        "help": "an untied output head learns at this multiple of --learning_rate (AdamW)"})
    bf16_if_fast: bool = field(default=False, metadata={
        "help": "bf16 autocast only where this machine runs bfloat16 matrix products faster than float32; there, "
                "on a CPU, the model is also compiled (--torch_compile), which the bf16 step gains from and the "
                "float32 one does not"})

    def __post_init__(self):
        if self.bf16_if_fast and not self.bf16:
            self.bf16 = fast_bfloat16()  # on a CPU without bf16 units, bf16 autocast is ~100x slower
        if self.bf16_if_fast:
            self.torch_compile = self.torch_compile or compile_pays(self)
        super().__post_init__()

    def follow_rank_zero(self) -> None:
        """bf16-if-fast as process 0 measured it, on every process (tinygpt.ranks): the processes of one run
        measure apart, and must not train in different precisions. Called before anything else asks tinygpt.ranks."""
        _ = self.device  # the processes set up as TrainingArguments sets them up (its backend, timeout), first
        if self.bf16_if_fast:
            self.bf16 = decided_by_rank_zero(self.bf16)
            self.mixed_precision = "bf16" if self.bf16 else "no"  # what Trainer's accelerator is built with



def parse_arguments(argv: list[str]):
    """(model, data, training) arguments, with the chosen recipe's values under the command line's; the
    model arguments' recipe and model_preset resolved (--preset is one or the other)."""
    named = {}
    for i, arg in enumerate(argv):
        for option in ("--recipe", "--model_preset", "--model-preset", "--preset"):
            if arg == option and i + 1 < len(argv):
                named[option.replace("-", "_").strip("_")] = argv[i + 1]
            elif arg.startswith(option + "="):
                named[option.replace("-", "_").strip("_")] = arg.split("=", 1)[1]
    preset = named.get("preset")
    if preset is not None and preset not in RECIPES and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose a recipe {sorted(RECIPES)} or a model {sorted(PRESETS)}")
    recipe = named.get("recipe") or (preset if preset in RECIPES else None)
    model_preset = named.get("model_preset") or (preset if preset in PRESETS and preset not in RECIPES else None)
    if recipe is None and model_preset is None:
        recipe = "tinystories-41m"  # the seed's run
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    if model_preset is not None and model_preset not in PRESETS:
        raise ValueError(f"unknown model preset {model_preset!r}; choose one of {sorted(PRESETS)}")
    recipe_argv = RECIPES[recipe]["argv"] if recipe else []  # a bare model preset trains with the defaults
    parser = HfArgumentParser((ModelArguments, DataArguments, TinyGPTTrainingArguments))
    model_args, data_args, args = parse_arguments_or_exit(parser, recipe_argv + list(argv))
    model_args.recipe, model_args.model_preset = recipe, model_preset or RECIPES[recipe]["model"]
    if model_args.config_overrides or model_preset:
        model_args.auto_shape = None  # the shape the user wrote wins over the recipe's measured choice
    if model_args.auto_shape and args.time_budget is None:
        raise ValueError("--auto_shape picks the shape for a time budget: give --time_budget MINUTES as well")
    return model_args, data_args, args


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


def load_or_build_tokenizer(model_args: ModelArguments, raw, out: Path, args):
    if model_args.tokenizer:
        return AutoTokenizer.from_pretrained(model_args.tokenizer)
    folder = out / "tokenizer"
    with args.main_process_first(desc="building the tokenizer"):
        if not (folder / "tokenizer.json").is_file():
            build = {"prune": prune_tokenizer, "train": train_tokenizer}.get(model_args.build_tokenizer)
            if build is None:
                raise ValueError(f"--build_tokenizer must be prune or train, got {model_args.build_tokenizer!r}")
            build(raw["train"]["text"] if hasattr(raw["train"], "cache_files") else
                  (row["text"] for row in raw["train"].take(200_000)),
                  vocab_size=model_args.tokenizer_vocab_size, source=model_args.tokenizer_source, out_dir=folder)
    return AutoTokenizer.from_pretrained(folder)


def build_model(model_args: ModelArguments, tokenizer, block_size: int | None,
                shape: dict | None = None) -> TinyGPTForCausalLM:
    """A fresh model has exactly the positions it trains on (block_size, when given); a loaded one keeps its own.
    shape: config overrides chosen by measurement (--auto_shape), on top of --config_overrides."""
    special = _special_tokens(tokenizer)
    if model_args.init_from:
        model = _load_checkpoint(model_args.init_from, tokenizer)
        model.config.update(special)
    else:
        model = TinyGPTForCausalLM(_fresh_config(model_args, tokenizer, block_size, shape))
        if model_args.zero_init_residual:
            zero_init_residual(model)
    model.generation_config = GenerationConfig(**STORY_SAMPLING, pad_token_id=tokenizer.pad_token_id, **special)
    return model


def zero_init_residual(model: TinyGPTForCausalLM) -> None:
    """Each block starts as the identity: its attention and MLP output projections at zero (--zero_init_residual)."""
    for layer in model.model.layers:
        nn.init.zeros_(layer.attn.out_proj.weight)
        nn.init.zeros_(layer.mlp.fc_out.weight)


def _special_tokens(tokenizer) -> dict:
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}


def _fresh_config(model_args: ModelArguments, tokenizer, block_size: int | None,
                  shape: dict | None = None) -> TinyGPTConfig:
    overrides = {**_parse_overrides(model_args.config_overrides), **(shape or {})}
    if block_size is not None:
        positions = overrides.setdefault("max_position_embeddings", block_size)
        if positions != block_size:
            raise ValueError(f"--block_size {block_size} and max_position_embeddings={positions} differ: a fresh "
                             "model has the positions it is trained on, so give one of the two")
    return TinyGPTConfig.from_preset(model_args.model_preset,
                                     **{**overrides, "vocab_size": len(tokenizer), **_special_tokens(tokenizer)})


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
    """Trainer with the project's evaluation (`evaluate_texts`: the one bits-per-byte definition, the same as
    `tinygpt eval`), its learning-rate `Schedule` (which a time budget re-plans) and, with --muon, Muon.
    The evaluation data are the validation stories (a "text" column), not token blocks."""

    def __init__(self, *args, block_size: int, started: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.label_smoother is not None and self.compute_loss_func is None:
            # Trainer shifts the labels for label smoothing only for transformers' own causal-LM classes; TinyGPT
            # predicts the next token too, so its smoothed loss is taken from shifted labels (Trainer's public
            # compute_loss_func: the model returns logits when the labels are taken out).
            smoother = self.label_smoother
            self.compute_loss_func = lambda outputs, labels, num_items_in_batch=None: smoother(
                outputs, labels, shift_labels=True, num_items_in_batch=num_items_in_batch)
        self.block_size = block_size
        self.started = process_start_time() if started is None else started
        self.schedule: Schedule | None = None  # a TimeBudget attached to this trainer gives its own

    def log(self, logs: dict, start_time: float | None = None) -> None:
        """Every log entry also carries the seconds since the process started (loss against wall time)."""
        super().log({**logs, "elapsed_s": round(time.time() - self.started, 1)}, start_time)

    def create_optimizer(self, model=None):
        model = model or self.model
        if self.optimizer is None and self.args.muon:
            self.optimizer = build_muon_with_adamw(model, self.args, set(self.get_decay_parameter_names(model)))
        elif self.optimizer is None and (self.args.embedding_lr_multiplier, self.args.head_lr_multiplier) != (1, 1):
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            kwargs.pop("lr", None)
            self.optimizer = optimizer_cls(adamw_groups(model, self.args, set(self.get_decay_parameter_names(model))),
                                           lr=self.args.learning_rate, **kwargs)
        return super().create_optimizer(model)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            if self.schedule is None:  # no budget: the arguments' schedule over Trainer's step count
                self.schedule = Schedule.of(self.args)
            if not self.schedule.planned:
                self.schedule.total_steps = num_training_steps
            self.lr_scheduler = LambdaLR(optimizer or self.optimizer, self.schedule)
        return self.lr_scheduler

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        data = self.eval_dataset if eval_dataset is None else eval_dataset
        began = time.time()
        result = evaluate_texts(self.model, self.processing_class, (row["text"] for row in data), self.block_size,
                                self.args.per_device_eval_batch_size, progress=not self.args.disable_tqdm,
                                stories_apart=getattr(self.data_collator, "stories_apart", False))  # as training reads
        metrics = {f"{metric_key_prefix}_{name}": result[name] for name in ("loss", "perplexity", "bits_per_byte")}
        metrics[f"{metric_key_prefix}_stories"] = result["stories"]
        metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - began, 3)  # as Trainer's own evaluate reports it
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics


def run_training(argv: list[str]) -> dict:
    """Set up (arguments, output folder, data, tokenizer, model), train, evaluate, save, summarise."""
    started = process_start_time()
    model_args, data_args, args = parse_arguments(argv)
    args.follow_rank_zero()
    if args.device.type == "cpu":
        keep_freed_memory()  # before the data and the model: every step reuses its memory (tinygpt.optim)
    checkpoint = prepare_output_dir(args.output_dir, model_args.resume)
    raw = load_raw_datasets(data_args, seed=args.seed)
    tokenizer = load_or_build_tokenizer(model_args, raw, Path(args.output_dir), args)
    shape, shape_decision = _auto_shape(model_args, data_args, args, tokenizer, started)
    set_seed(args.seed)  # the fresh model's weights depend on the seed alone, on every process
    model = build_model(model_args, tokenizer, data_args.block_size, shape)
    prepare_to_ship(tokenizer, model.config.max_position_embeddings)  # saved with every checkpoint and the final model
    block_size = data_args.block_size or model.config.max_position_embeddings
    if not 2 <= block_size <= model.config.max_position_embeddings:
        raise ValueError(f"--block_size {block_size} must be between 2 and the model's max_position_embeddings "
                         f"({model.config.max_position_embeddings})")
    prepare_for_cpu_training(model, args)
    with args.main_process_first(desc="tokenizing"):
        train = tokenize_for_training(raw["train"], tokenizer, block_size, data_args.packing,
                                      data_args.preprocessing_num_workers,
                                      seed=args.seed if args.data_seed is None else args.data_seed)
    validation = raw["validation"]
    eval_subset = validation.take(data_args.eval_subset_stories) if data_args.eval_subset_stories else validation
    samples = SampleStoriesCallback(tokenizer, model_args.sample_prompts, model_args.sample_max_new_tokens)
    budget = _time_budget(args, started, validation, eval_subset)
    timer = budget.timer if budget else StepTimer()  # a budget times the steps it plans with
    trainer = TinyGPTTrainer(
        model=model, args=args, train_dataset=train, eval_dataset=eval_subset, block_size=block_size, started=started,
        data_collator=CausalLMCollator(tokenizer.pad_token_id, data_args.stories_apart), processing_class=tokenizer,
        callbacks=[CheckpointCompleteCallback(), samples] + ([] if budget else [timer])
        + ([RepackEachEpoch(train)] if isinstance(train, PackedStories) else []))
    if budget:
        budget.attach(trainer)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    if args.world_size > 1:  # the processes follow one plan (tinygpt.ranks): each says where it ended
        # one write() per line: print() writes the text and its newline apart, and two processes sharing a pipe
        # then interleave them ("...trained 39 stepsprocess 0 of 2: ...")
        sys.stdout.write(f"process {args.process_index} of {args.world_size}: "
                         f"trained {trainer.state.global_step} steps\n")
        sys.stdout.flush()
    metrics = trainer.evaluate(validation)  # all of it, as `tinygpt eval` does
    model.config.use_cache = True  # Trainer turns the cache off for training; generation wants it back
    trainer.save_model(args.output_dir)  # model.safetensors, config.json + code files, tokenizer, generation_config
    trainer.save_state()  # trainer_state.json: every logged loss and evaluation, with elapsed_s
    if not trainer.is_world_process_zero():
        return metrics
    summary = RunSummary.of_run(argv, model_args, data_args, args, trainer, result, metrics, started, checkpoint,
                                block_size, samples.latest, evaluate_consistency(model, tokenizer),
                                budget.decision if budget else None, timer, shape_decision)
    summary.write(args.output_dir)
    plot_losses(trainer.state.log_history, Path(args.output_dir) / "loss.png")
    print(f"saved the model, tokenizer, {summary.FILE} and loss.png to {args.output_dir}")
    return metrics


def _auto_shape(model_args: ModelArguments, data_args, args, tokenizer,
                started: float) -> tuple[dict | None, dict | None]:
    """Measure the recipe's candidate shapes on this machine (tinygpt.shape): (the chosen shape's config
    overrides, the decision), or (None, None) without --auto_shape."""
    if not model_args.auto_shape or model_args.init_from:
        return None, None
    # process 0 measures alone (the others would share its cores and slow its measurement) and every process
    # trains the shape it chose
    chosen = None
    if is_deciding_process():
        chosen = pick_shape(model_args.auto_shape, lambda shape: _fresh_config(model_args, tokenizer,
                                                                               data_args.block_size, shape),
                            args, data_args.block_size or 256, args.time_budget * 60 - (time.time() - started))
    return decided_by_rank_zero(chosen)


def _time_budget(args, started: float, validation, eval_subset) -> TimeBudget | None:
    if args.time_budget is None:
        return None
    if args.time_budget <= 0:
        raise ValueError(f"--time_budget must be a positive number of minutes, got {args.time_budget}")
    # An explicit --max_steps caps the plan (whatever the command line says wins over a recipe's budget);
    # without one the budget alone decides, and Trainer is built with the placeholder (budget.UNBOUNDED_STEPS).
    cap = args.max_steps if args.max_steps > 0 else None
    if cap is None:
        args.max_steps = UNBOUNDED_STEPS
    # the final work evaluates all validation stories, then the consistency items (both forward passes only)
    item_bytes = 2 * utf8_bytes(item["prefix"] + " " + item["right"] for item in load_items())
    share = (_bytes(validation) + item_bytes) / max(1, _bytes(eval_subset))
    return TimeBudget(Schedule.of(args), started, args.time_budget * 60, final_share=share, max_steps=cap)


def _bytes(texts) -> int:
    return utf8_bytes(row["text"] for row in texts)


def main(argv=None) -> int:
    try:
        run_training(sys.argv[1:] if argv is None else argv)
    except (ValueError, DataFileError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
