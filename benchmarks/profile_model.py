"""Where the time goes: torch.profiler over a training step and a batch-1 decode of both models, by op family.

    python benchmarks/profile_model.py                # about 2 minutes on 2 cores (each job in its own process)

Same config and weights as benchmarks/bench_model.py (the seed model, `tinygpt_to_gpt_neo`). Profiles, each in a
fresh process as in bench_model.py (what earlier steps left in the allocator changes the figures), after a
warm-up, 2 training steps (batch 4 x 512, AdamW) in float32 and in bfloat16 autocast, and 32 greedy decode
steps at batch 1 after a 16-token prompt. Prints each op family's share of self CPU time and its milliseconds
per step (or per token), TinyGPT next to GPT-Neo: the matrix products both models share set the floor that
the rest of the step (attention, loss, elementwise, optimizer, Python) is compared against.
"""

import json
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import HfArgumentParser

from bench_model import train_step  # benchmarks/ is on the path when this file runs as a script
from tinygpt import TinyGPTConfig, TinyGPTForCausalLM
from tinygpt.convert import tinygpt_to_gpt_neo

# First match wins: op names (lower case) containing any of these words belong to the family.
FAMILIES = {
    "matrix products (mm, addmm, bmm)": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "attention (SDPA, softmax, masks)": ("scaled_dot_product", "flash_attention", "aten::softmax",
                                         "aten::_softmax", "aten::where", "masked_fill", "tril", "triu"),
    "loss (log_softmax, nll)": ("log_softmax", "nll_loss"),
    "optimizer (AdamW)": ("_foreach", "adam", "lerp", "addcdiv", "addcmul"),
    "dtype casts and copies": ("aten::copy_", "aten::to", "_to_copy", "aten::clone", "contiguous"),
    "fills and zeros": ("aten::fill_", "aten::zero_", "aten::zeros", "aten::empty"),
    "layer norm, GELU, adds": ("layer_norm", "gelu", "aten::add", "aten::mul", "aten::tanh", "aten::pow"),
}

WALL = "wall clock"


@dataclass
class Args:
    preset: str = "tinystories-41m"
    decode_tokens: int = 32
    job: str | None = None  # internal: "tinygpt|gpt-neo,fp32|bf16|decode", profiled in its own process


def family(name: str) -> str:
    name = name.lower()
    return next((fam for fam, words in FAMILIES.items() if any(w in name for w in words)), "other ops")


def by_family(prof, per: int, wall_s: float) -> dict[str, float]:
    """Self CPU milliseconds per family, divided by `per` (steps or tokens); plus the wall-clock time."""
    totals = defaultdict(float)
    for event in prof.key_averages():
        totals[family(event.key)] += event.self_cpu_time_total / 1e3 / per
    totals[WALL] = 1e3 * wall_s / per
    return totals


def train_profile(model, precision: str, steps: int = 2) -> dict[str, float]:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (4, 512), generator=torch.Generator().manual_seed(0))

    train_step(model, optimizer, ids, precision)  # warm-up: allocations, optimizer state
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            train_step(model, optimizer, ids, precision)
        wall = time.perf_counter() - start
    return by_family(prof, steps, wall)


@torch.no_grad()
def decode_profile(model, tokens: int) -> dict[str, float]:
    model.eval()
    ids = torch.randint(0, model.config.vocab_size - 1, (1, 16), generator=torch.Generator().manual_seed(1))
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                  do_sample=False, pad_token_id=model.config.eos_token_id)
    model.generate(ids, **kwargs)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        model.generate(ids, **kwargs)
        wall = time.perf_counter() - start
    return by_family(prof, tokens, wall)


def table(title: str, unit: str, ours: dict, neo: dict) -> str:
    lines = [f"\n{title}", f"| op family | TinyGPT {unit} | share | GPT-Neo {unit} | share |", "|---|--:|--:|--:|--:|"]
    total_ours, total_neo = (sum(v for k, v in d.items() if k != WALL) for d in (ours, neo))
    for fam in list(FAMILIES) + ["other ops"]:
        a, b = ours.get(fam, 0.0), neo.get(fam, 0.0)
        lines.append(f"| {fam} | {a:,.1f} | {100 * a / total_ours:.0f}% | {b:,.1f} | {100 * b / total_neo:.0f}% |")
    lines.append(f"| **all ops (self CPU time)** | {total_ours:,.1f} | | {total_neo:,.1f} | |")
    lines.append(f"| wall clock (under the profiler) | {ours[WALL]:,.1f} | | {neo[WALL]:,.1f} | |")
    return "\n".join(lines)


def job(args: Args) -> None:
    which, what = args.job.split(",")
    torch.manual_seed(0)
    model = TinyGPTForCausalLM(TinyGPTConfig.from_preset(args.preset))
    model = tinygpt_to_gpt_neo(model) if which == "gpt-neo" else model
    result = decode_profile(model, args.decode_tokens) if what == "decode" else train_profile(model, what)
    print(json.dumps(result))


def run_job(args: Args, which: str, what: str) -> dict[str, float]:
    argv = [sys.executable, __file__, f"--preset={args.preset}", f"--decode_tokens={args.decode_tokens}",
            f"--job={which},{what}"]
    return json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()[-1])


def main():
    (args,) = HfArgumentParser(Args).parse_args_into_dataclasses()
    if args.job:
        return job(args)
    print(f"{args.preset}, {torch.get_num_threads()} threads")
    for what, title, unit in (("fp32", "training step fp32, batch 4 x 512", "ms/step"),
                              ("bf16", "training step bf16, batch 4 x 512", "ms/step"),
                              ("decode", f"greedy decode, batch 1, eager, {args.decode_tokens} tokens", "ms/token")):
        print(table(title, unit, run_job(args, "tinygpt", what), run_job(args, "gpt-neo", what)))


if __name__ == "__main__":
    main()
