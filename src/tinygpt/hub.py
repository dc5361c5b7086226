"""Publishing a trained TinyGPT to the Hugging Face Hub (`push_to_hub.py` is the entry point).

The Hub repository is first assembled in a local folder (config.json with auto_map, the two code files,
model.safetensors, tokenizer, generation_config.json, a model card), then uploaded with huggingface_hub.
The token comes from HF_TOKEN or the stored login and is only ever handed to HfApi: it is never written
to a file, a log line or the card.
"""

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .parameters import format_parameter_table, parameter_table
from .summary import RunSummary

EXTRA_FILES = (RunSummary.FILE, "loss.png")  # shown by the card when the training run left them


class PublishError(ValueError):
    """Input that cannot be published; raised before anything is uploaded."""


@dataclass
class PublishArguments:
    model: str = field(metadata={"help": "a trained folder (train_hf.py output, or any TinyGPT folder)"})
    repo_id: str = field(metadata={"help": "USER/NAME or ORG/NAME on the Hub"})
    local_dir: str | None = field(default=None, metadata={"help": "where to assemble the repo (default: temp)"})
    dry_run: bool = field(default=False, metadata={"help": "assemble and list the files, upload nothing"})
    private: bool = field(default=False, metadata={"help": "create the repository as private"})
    revision: str | None = field(default=None, metadata={"help": "branch to upload to (created if missing)"})
    commit_message: str = field(default="Upload TinyGPT model", metadata={"help": "the commit message"})
    license: str = field(default="apache-2.0", metadata={"help": "license id for the card's metadata"})


def check_repo_id(repo_id: str) -> str:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise PublishError(f"malformed repo id {repo_id!r}: {error}") from None
    if repo_id.count("/") != 1:
        raise PublishError(f"malformed repo id {repo_id!r}: use the form USER/NAME or ORG/NAME")
    return repo_id


def check_model_folder(folder) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise PublishError(f"{folder}: no such model folder")
    if not any(folder.glob("*.safetensors")):
        raise PublishError(f"{folder}: no weights (model.safetensors); publish a folder saved by save_pretrained "
                           "or train_hf.py")
    if not (folder / "tokenizer.json").is_file():
        raise PublishError(f"{folder}: no tokenizer (tokenizer.json); save the tokenizer next to the model")
    return folder


def assemble_repo(model_dir, local_dir, repo_id: str, license: str = "apache-2.0") -> list[Path]:
    """Write the Hub repository's files into local_dir; returns them."""
    from transformers import AutoModelForCausalLM

    from .tokenizer import load_for_model

    model_dir = check_model_folder(model_dir)
    check_repo_id(repo_id)
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if model.config.model_type != "tinygpt":
        raise PublishError(f"{model_dir}: a {model.config.model_type} model, not TinyGPT")
    tokenizer = load_for_model(model_dir, model.config.max_position_embeddings)
    model.save_pretrained(local_dir)  # safetensors, config.json with auto_map, code files, generation_config
    tokenizer.save_pretrained(local_dir)
    for name in EXTRA_FILES:
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, local_dir / name)
    summary = RunSummary.read(model_dir)
    model_card(model, repo_id, summary, license, has_plot=(model_dir / "loss.png").is_file()).save(
        local_dir / "README.md")
    return sorted(p for p in local_dir.rglob("*") if p.is_file())


def model_card(model, repo_id: str, summary: RunSummary | None, license: str, has_plot: bool = False) -> ModelCard:
    config = model.config
    results = summary.eval if summary else {}
    consistency = (summary.consistency or {}).get("accuracy") if summary else None
    split = summary.evaluated_on()[0] if summary else None
    # the held-out figures are on the run's evaluation data, named as it is; consistency on the package's items
    metrics = [("loss", "loss", results.get("eval_loss"), split),
               ("perplexity", "perplexity", results.get("eval_perplexity"), split),
               ("bits_per_byte", "bits per byte", results.get("eval_bits_per_byte"), split),
               ("accuracy", "story consistency (tinygpt)", consistency, "tinygpt consistency items")]
    eval_results = [EvalResult(task_type="text-generation", dataset_type="roneneldan/TinyStories",
                               dataset_name="TinyStories", dataset_split=on, metric_type=kind,
                               metric_name=name, metric_value=round(float(value), 4))
                    for kind, name, value, on in metrics if value is not None]
    data = ModelCardData(language="en", license=license, library_name="transformers", pipeline_tag="text-generation",
                         datasets=["roneneldan/TinyStories"], tags=["tinygpt", "gpt-neo", "tinystories", "custom_code"],
                         model_name=repo_id.split("/")[-1], eval_results=eval_results or None)
    layers = ", ".join(config.attention_types)
    sections = [
        f"# {repo_id.split('/')[-1]}",
        "A small GPT-Neo-style language model trained on TinyStories (short stories written by GPT-3.5/4 in the "
        "words a young child knows), with a reduced vocabulary. Built with TinyGPT: the modeling code ships in "
        "this repository (`modeling_tinygpt.py`, `configuration_tinygpt.py`), so load it with "
        "`trust_remote_code=True`.",
        "## Usage",
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer, pipeline\n\n"
        f"generator = pipeline(\"text-generation\", model=\"{repo_id}\", trust_remote_code=True)\n"
        "print(generator(\"Once upon a time\", max_new_tokens=120)[0][\"generated_text\"])\n\n"
        # AutoTokenizer reads config.json, whose auto_map asks for trust_remote_code too
        f"tokenizer = AutoTokenizer.from_pretrained(\"{repo_id}\", trust_remote_code=True)\n"
        f"model = AutoModelForCausalLM.from_pretrained(\"{repo_id}\", trust_remote_code=True)\n```",
        "## Architecture",
        f"Decoder-only transformer (GPT-Neo design): learned position embeddings ({config.max_position_embeddings} "
        f"positions), {config.num_hidden_layers} pre-LayerNorm blocks of width {config.hidden_size} with "
        f"{config.num_attention_heads} heads and a {config.intermediate_size}-wide {config.activation_function} MLP; "
        f"attention layers {layers} (local = sliding window of {config.window_size} tokens), scores "
        f"{'scaled' if config.scale_attention_scores else 'not scaled'} by 1/sqrt(head_dim); vocabulary "
        f"{config.vocab_size:,} tokens; output head {'tied to' if config.tie_word_embeddings else 'separate from'} "
        "the token embedding.",
        "### Parameters",
        format_parameter_table(parameter_table(model)),
    ]
    if summary:
        sections += _training_sections(summary, has_plot)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def _multipliers(hyper: dict) -> str:
    """The parts that learn at another rate than the rest, as the card's learning-rate row says it ("" if none)."""
    parts = [f"{part} x{hyper[key]:g}" for part, key in (("embeddings", "embedding_lr_multiplier"),
                                                          ("head", "head_lr_multiplier")) if hyper.get(key, 1) != 1]
    return f" ({', '.join(parts)})" if parts else ""


def _optimizer(hyper: dict) -> str:
    if not hyper.get("muon"):
        return "AdamW"
    momentum = hyper.get("muon_momentum")  # summaries written before it was recorded do not have it
    return f"Muon (block matrices{'' if momentum is None else f', momentum {momentum}'}) + AdamW"


def _training_sections(summary: RunSummary, has_plot: bool) -> list[str]:
    training, hyper, results = summary.training, summary.hyperparameters, summary.eval
    rows = [("steps", training.get("global_step")), ("tokens seen", training.get("tokens_seen")),
            ("block size", summary.data.get("block_size")),
            ("batch (per device x accumulation x devices)",
             f"{hyper.get('per_device_train_batch_size')} x {hyper.get('gradient_accumulation_steps')} x "
             f"{training.get('world_size', 1)}"),
            ("learning rate / schedule", f"{hyper.get('learning_rate')}{_multipliers(hyper)} / "
                                         f"{hyper.get('lr_scheduler_type')}"),
            ("optimizer", _optimizer(hyper)),
            ("AdamW betas / weight decay", f"{hyper.get('adam_beta1')}, {hyper.get('adam_beta2')} / "
                                           f"{hyper.get('weight_decay')}"),
            ("bf16 autocast", training.get("bf16")), ("training time (s)", _round(training.get("train_runtime_s"))),
            ("time budget (min)", hyper.get("time_budget")), ("wall time (s)", _round(training.get("wall_time_s")))]
    speed = summary.throughput or {}
    if speed:
        rows += [("training tokens/s", speed.get("tokens_per_s")),
                 ("model FLOP/s (share of the machine's matmul peak)",
                  f"{speed.get('model_gflops_per_s')} GFLOP/s ({speed.get('share_of_peak', 0):.0%} of "
                  f"{speed.get('matmul_peak_gflops_per_s')} in {speed.get('precision')})"),
                 ("machine", (summary.environment or {}).get("cpu"))]
    lines = ["## Training", f"Command: `{summary.command}`", "| setting | value |", "|---|---|"]
    lines += [f"| {name} | {f'{value:,}' if isinstance(value, int) and not isinstance(value, bool) else value} |"
              for name, value in rows]
    sections = ["\n".join(lines[:2]), "\n".join(lines[2:])]
    if results:
        consistency = summary.consistency or {}
        sections += ["## Results",
                     f"Loss, perplexity and bits per byte on {summary.evaluated_on()[1]}; story consistency on the "
                     "package's own items.",
                     "| loss | perplexity | bits per byte | story consistency |\n|--:|--:|--:|--:|\n"
                     f"| {results.get('eval_loss', float('nan')):.4f} | {results.get('eval_perplexity', float('nan')):.3f}"
                     f" | {results.get('eval_bits_per_byte', float('nan')):.4f} | "
                     + (f"{consistency['accuracy']:.3f} ({consistency['correct']}/{consistency['items']}) |"
                        if consistency else "- |"),
                     "Story consistency: the share of the package's story items (tinygpt.consistency) whose right "
                     "continuation the model finds more likely than the wrong one (chance: 0.5)."]
        if isinstance(next(iter(consistency.get("by_kind", {}).values()), None), dict):
            sections.append("| consistency by kind | accuracy | 95% interval | items |\n|---|--:|--:|--:|\n" + "\n".join(
                f"| {kind} | {k['accuracy']:.3f} | {k['interval'][0]:.3f}-{k['interval'][1]:.3f} | {k['items']} |"
                for kind, k in [("all", consistency)] + list(consistency["by_kind"].items())))
    if has_plot:
        sections.append("![loss curves](loss.png)")
    if summary.samples:
        sections.append("## Sample stories\n\n" + "\n\n".join(f"> {s['story']}".replace("\n", "\n> ")
                                                               for s in summary.samples))
    return sections


def _round(value):
    return round(value) if isinstance(value, float) else value


def publish(args: PublishArguments) -> Path:
    """Check everything, assemble the repository folder, list it, and upload it unless --dry_run."""
    import tempfile

    check_repo_id(args.repo_id)
    check_model_folder(args.model)
    if not args.dry_run and not get_token():
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login` before uploading")
    local_dir = Path(args.local_dir or tempfile.mkdtemp(prefix="tinygpt-hub-"))
    files = assemble_repo(args.model, local_dir, args.repo_id, args.license)
    print(f"{'would upload' if args.dry_run else 'uploading'} {len(files)} files from {local_dir} "
          f"to {args.repo_id}{'@' + args.revision if args.revision else ''}:")
    for path in files:
        print(f"  {path.relative_to(local_dir)}  ({path.stat().st_size:,} bytes)")
    if not args.dry_run:
        url = upload(local_dir, args.repo_id, args.private, args.revision, args.commit_message)
        print(f"uploaded: {url}")
    return local_dir


def upload(local_dir, repo_id: str, private: bool = False, revision: str | None = None,
           commit_message: str = "Upload TinyGPT model", api: HfApi | None = None) -> str:
    """Create the repository if needed and upload the folder; returns the commit URL."""
    token = get_token()  # HF_TOKEN, or the login stored by `hf auth login`
    if not token:
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login` before uploading")
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    commit = api.upload_folder(folder_path=str(local_dir), repo_id=repo_id, repo_type="model", revision=revision,
                               commit_message=commit_message)
    return str(getattr(commit, "commit_url", commit))
