"""The model's shape for the machine at hand: `--auto_shape 96x6,128x8,160x8` (the CPU recipe's candidates).

Before training, each candidate (hidden x layers, heads of 32) runs a few training steps of the recipe (its
batch, block, precision and optimizer) and its tokens per second are measured: a few seconds each, inside the
time budget. The rule, fitted to the recorded 30-minute runs (BENCHMARKS.md, "The record"): take the largest
candidate that the budget lets see at least TOKENS_PER_PARAMETER tokens per parameter at its measured speed, or
the smallest if none does. On 2 AVX2 cores, at the same 30 minutes, 96 x 6 (2.2M parameters) seeing 12.7M tokens
(5.7 per parameter) beat 128 x 8 (3.7M) seeing 6.4M (1.75 per parameter) and 160 x 8 seeing fewer still, as
128 x 8 had beaten 256 x 4 at 0.4-0.7: the threshold lies between 1.75 (lost) and 5.7 (won). A machine that
multiplies faster (bf16 units) affords a wider model by the same rule. An explicit `--config_overrides` or
`--model_preset` wins: then no candidate is measured.
"""
import time
from collections.abc import Callable

import torch

from .configuration_tinygpt import TinyGPTConfig
from .modeling_tinygpt import TinyGPTForCausalLM
from .optim import build_muon_with_adamw

TOKENS_PER_PARAMETER = 3.0  # between 1.75 (lost at 30 minutes) and 5.7 (won)
HEAD_SIZE = 32
FINAL_SHARE = 0.05  # of the budget, kept for evaluations and saving when estimating the tokens a shape will see


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """"128x8,160x8" -> [(128, 8), (160, 8)], with a clear error for anything else."""
    shapes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        hidden, _, layers = item.partition("x")
        if not (hidden.isdigit() and layers.isdigit()) or int(hidden) % HEAD_SIZE:
            raise ValueError(f"--auto_shape: {item!r} is not HIDDENxLAYERS with HIDDEN a multiple of {HEAD_SIZE} "
                             "(e.g. 96x6,128x8,160x8)")
        shapes.append((int(hidden), int(layers)))
    if not shapes:
        raise ValueError("--auto_shape needs at least one HIDDENxLAYERS shape")
    return shapes


def shape_overrides(hidden: int, layers: int) -> dict:
    return {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": hidden // HEAD_SIZE}


def measure_tokens_per_s(config: TinyGPTConfig, args, block_size: int, steps: int = 3) -> float:
    """Training tokens per second of a fresh model of `config` with the run's batch, precision and optimizer
    (the first step, which allocates, is not timed)."""
    model = TinyGPTForCausalLM(config).train()
    optimizer = build_muon_with_adamw(model, args, {n for n, p in model.named_parameters() if p.ndim == 2}) \
        if args.muon else torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    ids = torch.randint(0, config.vocab_size, (args.per_device_train_batch_size, block_size))
    device = "cuda" if torch.cuda.is_available() and not args.use_cpu else "cpu"
    model.to(device)
    ids = ids.to(device)
    seconds = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return ids.numel() / (sum(seconds[1:]) / steps)


def pick_shape(candidates: str, make_config: Callable[[dict], TinyGPTConfig], args, block_size: int,
               seconds_left: float) -> tuple[dict, dict]:
    """(config overrides of the chosen shape, the decision with every candidate's measurement).
    make_config: the run's fresh config with the given overrides."""
    measured = []
    for hidden, layers in parse_shapes(candidates):
        config = make_config(shape_overrides(hidden, layers))
        started = time.perf_counter()
        # measured by one process; each of the run's processes trains its own batches at this speed
        tokens_per_s = measure_tokens_per_s(config, args, block_size) * args.world_size
        parameters = TinyGPTForCausalLM(config).num_parameters()
        tokens = tokens_per_s * (seconds_left * (1 - FINAL_SHARE) - (time.perf_counter() - started))
        measured.append({"shape": f"{hidden}x{layers}", "parameters": parameters, "tokens_per_s": round(tokens_per_s),
                         "expected_tokens": round(tokens), "tokens_per_parameter": round(tokens / parameters, 2)})
        seconds_left -= time.perf_counter() - started
    fitting = [m for m in measured if m["tokens_per_parameter"] >= TOKENS_PER_PARAMETER]
    chosen = max(fitting, key=lambda m: m["parameters"]) if fitting else min(measured, key=lambda m: m["parameters"])
    hidden, layers = map(int, chosen["shape"].split("x"))
    decision = {"chosen": chosen["shape"], "rule": f"largest with >= {TOKENS_PER_PARAMETER} tokens per parameter, else the smallest",
                "candidates": measured}
    print("shape for this machine: " + ", ".join(f"{m['shape']} {m['tokens_per_s']:,} tokens/s "
                                                 f"({m['tokens_per_parameter']} tokens/parameter)" for m in measured)
          + f" -> {chosen['shape']}", flush=True)
    return shape_overrides(hidden, layers), decision
