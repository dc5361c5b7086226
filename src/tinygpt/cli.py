"""The `tinygpt` command.

    tinygpt presets                                   # the named model sizes and their parameter counts
    tinygpt generate --model DIR "Once upon a time"   # stream a story from a saved model (--compile: faster)
    tinygpt eval --model DIR --data valid.txt [--consistency]   # bits per byte, story consistency
    tinygpt lm-eval-tasks                             # the folder of the lm-evaluation-harness tasks
    tinygpt export onnx --model DIR --out DIR [--int8]   # ONNX with a KV cache, for onnxruntime / transformers.js
    tinygpt export gpt-neo --model DIR --out DIR      # the same weights as a native GPT-Neo folder
    tinygpt serve DIR [--port 8000]                   # an OpenAI-compatible completions server
    tinygpt generate --model ONNX_DIR "Once upon a time" # the exported model on onnxruntime
    tinygpt app --model DIR [--model DIR2]            # the story playground in the browser (Gradio)
    tinygpt space --model-id USER/NAME --out DIR      # a Hugging Face Space folder running that playground
    tinygpt tokenizer prune --data train.txt --vocab-size 8000 --out tokenizer-8k [--source SRC]
    tinygpt tokenizer train --data train.txt --vocab-size 8000 --out tokenizer-bpe-8k
"""

import argparse
import os
import sys
from pathlib import Path


def cmd_presets(args) -> None:
    from .configuration_tinygpt import PRESETS, TinyGPTConfig
    from .modeling_tinygpt import TinyGPTForCausalLM

    print(f"{'preset':<18}{'hidden':>7}{'layers':>7}{'heads':>6}{'parameters':>14}")
    for name in PRESETS:
        config = TinyGPTConfig.from_preset(name)
        count = TinyGPTForCausalLM(config).num_parameters()
        print(f"{name:<18}{config.hidden_size:>7}{config.num_hidden_layers:>7}{config.num_attention_heads:>6}"
              f"{count:>14,}")


def cmd_generate(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, TextStreamer

    from .batching import checked, new_tokens, pad_token_id

    _check_model_folder(args.model)
    onnx = (Path(args.model) / "onnx" / "model.onnx").is_file()  # a folder written by `tinygpt export onnx`
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if onnx:
        from .onnx_export import OnnxGenerator

        model = OnnxGenerator(args.model, int8=args.int8)
        limit, generation = model.positions, GenerationConfig.from_pretrained(args.model)
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model).eval()
        limit, generation = model.config.max_position_embeddings, model.generation_config
    inputs = tokenizer(args.prompt, return_tensors="pt")
    room = new_tokens(inputs.input_ids.shape[1], args.max_new_tokens, limit, "--max-new-tokens")  # or refused
    # The model's generation_config (saved by training) says how to sample; the options given here override it.
    settings = {name: checked(name, getattr(args, name), "--" + name.replace("_", "-"))
                for name in ("temperature", "top_k", "top_p", "repetition_penalty") if getattr(args, name) is not None}
    if args.greedy or settings.get("temperature") == 0:  # temperature 0 is greedy, as in the playground and server
        settings = {k: v for k, v in settings.items() if k != "temperature"} | {"do_sample": False}
    elif settings:
        settings["do_sample"] = True
    count = room if args.max_new_tokens is not None else min(generation.max_new_tokens or 200, room)
    streamer = TextStreamer(tokenizer, skip_special_tokens=True)
    if onnx:
        streamer.put(inputs.input_ids)  # the prompt first, as generate() streams it
        sampling = {k: v for k, v in {**generation.to_dict(), **settings}.items()
                    if k in ("do_sample", "temperature", "top_k", "top_p") and v is not None}
        model.generate(inputs.input_ids.numpy(), max_new_tokens=count, eos_token_id=tokenizer.eos_token_id,
                       seed=args.seed, streamer=streamer, **sampling)
        return
    torch.manual_seed(args.seed)
    if args.compile:
        from .compiled import CompiledGenerator

        model = CompiledGenerator(model)
    model.generate(
        **inputs,
        max_new_tokens=count,
        streamer=streamer,
        pad_token_id=pad_token_id(tokenizer),
        **settings,
    )


def cmd_eval(args) -> None:
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .consistency import evaluate_consistency
    from .data import load_texts
    from .evaluation import evaluate_texts
    from .optim import keep_freed_memory

    if not args.data and not args.consistency:
        raise ValueError("give --data (held-out stories) and/or --consistency")
    _check_model_folder(args.model)
    # every batch allocates and frees the same logits (16 x 256 x 8,001 float32, 131 MB): kept for the next batch,
    # all of valid.txt took 116 s instead of 143-157 on 2 Zen 5 cores (docs/benchmarks-history.md)
    keep_freed_memory()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    result = {}
    if args.data:
        texts = load_texts(args.data[0] if len(args.data) == 1 else args.data, split=args.split)["text"]
        result = evaluate_texts(model, tokenizer, texts, block_size=args.block_size, batch_size=args.batch_size,
                                stories_apart=args.stories_apart)
        print(f"{result['stories']:,} stories, {result['tokens']:,} tokens, {result['bytes']:,} bytes, "
              f"blocks of {result['block_size']} tokens" + (", each story read alone" if args.stories_apart else ""))
        print(f"loss {result['loss']:.4f}   perplexity {result['perplexity']:.3f}   "
              f"bits per byte {result['bits_per_byte']:.4f}")
    if args.consistency:
        result["consistency"] = evaluate_consistency(model, tokenizer)
        consistency = result["consistency"]
        for kind, k in [("all", consistency)] + list(consistency["by_kind"].items()):
            print(f"story consistency, {kind}: {k['accuracy']:.3f} (95% interval {k['interval'][0]:.3f}-"
                  f"{k['interval'][1]:.3f}, {k['items']} items)")
    if args.json:
        print(json.dumps(result))


def cmd_export(args) -> None:
    _check_model_folder(args.model)
    if args.format == "gpt-neo":
        from .convert import export_gpt_neo

        out = export_gpt_neo(args.model, args.out)
    else:
        from .onnx_export import export_onnx

        out = export_onnx(args.model, args.out, int8=args.int8)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    print(f"exported {args.model} to {out}:")
    for path in files:
        print(f"  {path.relative_to(out)}  ({path.stat().st_size:,} bytes)")


def cmd_serve(args) -> None:
    from .serve import serve

    _check_model_folder(args.model)
    options = _max_batch(args)
    serve(args.model, host=args.host, port=args.port, device=args.device, trust_remote_code=args.trust_remote_code,
          **options)


def _max_batch(args) -> dict:
    """--max-batch of `tinygpt serve` and `tinygpt app`, as options (none given: the command's default)."""
    if args.max_batch is not None and args.max_batch < 1:
        raise ValueError(f"--max-batch must be at least 1, got {args.max_batch}")
    return {} if args.max_batch is None else {"max_batch": args.max_batch}


def cmd_lm_eval_tasks(args) -> None:
    """For `lm_eval ... --include_path "$(tinygpt lm-eval-tasks)" --tasks tinystories_bpb,tinystories_consistency`."""
    from .consistency import EVALS

    print(EVALS)


def _check_model_folder(model: str) -> None:
    if os.sep in model and not os.path.isdir(model):
        raise ValueError(f"model folder {model!r} does not exist")


def cmd_app(args) -> None:
    from .app import build_app

    for model in args.model:
        _check_model_folder(model)
    options = _max_batch(args)
    build_app(args.model, **options).launch(server_name=args.host, server_port=args.port, show_error=True)


def cmd_space(args) -> None:
    """A Space folder: the self-contained app, its requirements, and a README with Space metadata."""
    import shutil
    from pathlib import Path

    from . import app, batching

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(app.__file__, out / "app.py")
    shutil.copy(batching.__file__, out / "batching.py")  # app.py imports it from beside itself
    (out / "requirements.txt").write_text("\n".join(space_requirements()) + "\n")
    (out / "README.md").write_text(
        f"---\ntitle: TinyGPT story playground\nemoji: 📖\nsdk: gradio\napp_file: app.py\n"
        f"models:\n- {args.model_id}\nvariables:\n  TINYGPT_MODEL: {args.model_id}\n---\n\n"
        f"Write stories with [{args.model_id}](https://huggingface.co/{args.model_id}), a TinyGPT trained on "
        "TinyStories.\n", encoding="utf-8")
    print(f"wrote a Space for {args.model_id} to {out}: app.py, batching.py, requirements.txt, README.md")


def space_requirements() -> list[str]:
    """What the Space's app.py and the model's code need, as pyproject states it (torch, transformers, gradio)."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    wanted = {"torch", "transformers", "gradio"}
    found = {}
    for line in requires("tinygpt") or []:
        requirement = Requirement(line)
        if requirement.name in wanted and requirement.name not in found:
            requirement.marker = None  # gradio comes from the "app" extra; the Space always needs it
            found[requirement.name] = str(requirement)
    return [found.get(name, name) for name in sorted(wanted)]


def cmd_tokenizer(args) -> None:
    import json
    from pathlib import Path

    from .tokenizer import COVERAGE_FILE, format_coverage, prune_tokenizer, train_tokenizer

    out = Path(args.out)
    # What the result depends on; a rerun with the same inputs skips the work.
    recipe = {"method": args.method, "vocab_size": args.vocab_size, "source": str(args.source),
              "data": [[str(Path(f).resolve()), Path(f).stat().st_size if Path(f).is_file() else None]
                       for f in args.data]}
    recipe_file = out / "build.json"
    if (not args.force and recipe_file.is_file() and (out / "tokenizer.json").is_file()
            and json.loads(recipe_file.read_text()) == recipe):
        print(f"{out} is up to date (same data and settings); --force rebuilds it")
    else:
        build = prune_tokenizer if args.method == "prune" else train_tokenizer
        tokenizer = build([Path(f) for f in args.data], vocab_size=args.vocab_size, source=args.source, out_dir=out)
        recipe_file.write_text(json.dumps(recipe, indent=2))
        print(f"saved a {len(tokenizer):,}-token tokenizer to {out}")
    print(format_coverage(json.loads((out / COVERAGE_FILE).read_text())))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinygpt", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("presets", help="list the model presets").set_defaults(run=cmd_presets)

    generate = commands.add_parser("generate", help="stream a story from a saved model")
    generate.add_argument("prompt")
    generate.add_argument("--model", required=True, help="a folder saved by save_pretrained / train_hf.py")
    generate.add_argument("--max-new-tokens", type=int, default=None,
                          help="default: the model's generation_config, within the model's positions")
    # Sampling: the model's generation_config (written by train_hf.py) unless given here.
    generate.add_argument("--temperature", type=float, default=None)
    generate.add_argument("--top-k", type=int, default=None)
    generate.add_argument("--top-p", type=float, default=None)
    generate.add_argument("--repetition-penalty", type=float, default=None)
    generate.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--compile", action="store_true",
                          help="compiled decode step (tinygpt.compiled): faster on CPU after a 10-40 s compile")
    generate.add_argument("--int8", action="store_true", help="for an exported ONNX folder: the int8 model")
    generate.set_defaults(run=cmd_generate)

    app = commands.add_parser("app", help="the story playground (Gradio) on localhost")
    app.add_argument("--model", required=True, action="append",
                     help="a model folder or Hub id; repeat for a fixed list the page offers (nothing else loads)")
    app.add_argument("--host", default="127.0.0.1")
    app.add_argument("--port", type=int, default=7860)
    app.add_argument("--max-batch", type=int, default=None,
                     help="the most visitors' stories decoded together (1: one at a time; default tinygpt.batching.MAX_BATCH)")
    app.set_defaults(run=cmd_app)

    space = commands.add_parser("space", help="write a Hugging Face Space folder for a published model")
    space.add_argument("--model-id", required=True, help="the model's Hub id, USER/NAME")
    space.add_argument("--out", required=True)
    space.set_defaults(run=cmd_space)

    evaluate = commands.add_parser("eval", help="bits per byte on held-out stories, story consistency")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--data", nargs="+", help="held-out stories: files (.txt, .json/.jsonl, .parquet) or a "
                                                    "dataset folder or Hub id")
    evaluate.add_argument("--split", default="validation", help="the split of a dataset folder or Hub id")
    evaluate.add_argument("--consistency", action="store_true", help="also score the story-consistency items")
    evaluate.add_argument("--block-size", type=int, default=None,
                          help="default: the model's positions, the context it was trained on")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--stories-apart", action="store_true",
                          help="each story attends only to itself, from position 0, as if read alone")
    evaluate.add_argument("--json", action="store_true", help="also print the result as JSON")
    evaluate.set_defaults(run=cmd_eval)

    export = commands.add_parser("export", help="export a model to run outside PyTorch (ONNX, for onnxruntime and "
                                                 "transformers.js) or as a native GPT-Neo (for tools that know only "
                                                 "transformers' own models)")
    export.add_argument("format", choices=["onnx", "gpt-neo"])
    export.add_argument("--model", required=True, help="a TinyGPT folder")
    export.add_argument("--out", required=True, help="the folder to write (onnx/model.onnx, configs, tokenizer)")
    export.add_argument("--int8", action="store_true", help="also onnx/model_quantized.onnx (int8 weights)")
    export.set_defaults(run=cmd_export)

    serve = commands.add_parser("serve", help="an OpenAI-compatible completions server for a model")
    serve.add_argument("model", help="a model folder or Hub id; requests name it as their model")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-batch", type=int, default=None,
                       help="the most requests decoded together (1: one after another; default "
                            "tinygpt.serve.MAX_BATCH; BENCHMARKS.md, Serving)")
    serve.add_argument("--device", default="auto", help="e.g. cpu, cuda:0; auto: a GPU if there is one")
    serve.add_argument("--trust-remote-code", action="store_true",
                       help="for a Hub model whose code tinygpt does not provide")
    serve.set_defaults(run=cmd_serve)

    tasks = commands.add_parser("lm-eval-tasks", help="print the folder of the lm-evaluation-harness task YAMLs")
    tasks.set_defaults(run=cmd_lm_eval_tasks)

    from .tokenizer import DEFAULT_SOURCE

    tokenizer = commands.add_parser("tokenizer", help="build a reduced-vocabulary tokenizer")
    tokenizer.add_argument("method", choices=["prune", "train"],
                           help="prune: GPT-Neo's BPE cut to the top K tokens (the seed's); train: a new BPE")
    tokenizer.add_argument("--data", nargs="+", required=True, help="TinyStories .txt files")
    tokenizer.add_argument("--vocab-size", type=int, default=8000, help="regular tokens, <|endoftext|> on top")
    tokenizer.add_argument("--source", default=DEFAULT_SOURCE,
                           help="GPT-Neo's tokenizer: Hub id, folder, or tokenizer.json (also for the report)")
    tokenizer.add_argument("--out", required=True, help="output folder")
    tokenizer.add_argument("--force", action="store_true", help="rebuild even if the folder is up to date")
    tokenizer.set_defaults(run=cmd_tokenizer)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError) as error:  # bad input: say what, without a traceback
        print(f"tinygpt {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
