"""The `tinygpt` command.

    tinygpt presets                                   # the named model sizes and their parameter counts
    tinygpt generate --model DIR "Once upon a time"   # stream a story from a saved model
"""

import argparse
import os
import sys


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
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer  # tinygpt is registered by now

    if os.sep in args.model and not os.path.isdir(args.model):
        raise ValueError(f"model folder {args.model!r} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    inputs = tokenizer(args.prompt, return_tensors="pt")
    limit = model.config.max_position_embeddings
    if inputs.input_ids.shape[1] + args.max_new_tokens > limit:
        raise ValueError(f"prompt ({inputs.input_ids.shape[1]} tokens) plus --max-new-tokens "
                         f"({args.max_new_tokens}) exceeds the model's {limit} positions")
    torch.manual_seed(args.seed)
    sampling = dict(do_sample=True, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    model.generate(
        **inputs,
        max_new_tokens=args.max_new_tokens,
        repetition_penalty=args.repetition_penalty,
        streamer=TextStreamer(tokenizer, skip_special_tokens=True),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        **({"do_sample": False} if args.greedy else sampling),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinygpt", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("presets", help="list the model presets").set_defaults(run=cmd_presets)

    generate = commands.add_parser("generate", help="stream a story from a saved model")
    generate.add_argument("prompt")
    generate.add_argument("--model", required=True, help="a folder saved by save_pretrained / train_hf.py")
    generate.add_argument("--max-new-tokens", type=int, default=200)
    generate.add_argument("--temperature", type=float, default=0.8)
    generate.add_argument("--top-k", type=int, default=50)
    generate.add_argument("--top-p", type=float, default=0.95)
    generate.add_argument("--repetition-penalty", type=float, default=1.0)
    generate.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    generate.add_argument("--seed", type=int, default=0)
    generate.set_defaults(run=cmd_generate)
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
