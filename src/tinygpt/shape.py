"""The model's shape for the machine at hand: `--auto_shape 96x6,128x6,160x8,192x8` (the CPU recipe's
candidates; 128 x 8, a candidate until 2026-12-07, lost to a smaller shape in every full run).

Before training, the candidates (hidden x layers, heads of 32) are measured from the largest down: each runs a few
training steps of the recipe (its batch, block, precision, compilation and optimizer), a few seconds (20-30 s more
where the model is compiled) inside the time budget. The rule: train the largest candidate that the budget lets
see at least TOKENS_PER_PARAMETER tokens per parameter at its measured speed (the smaller ones are then not
measured), or the smallest if none does. The threshold is fitted to full 30-minute runs on both kinds of machine (the
runs, against their neighbours, in the comment at TOKENS_PER_PARAMETER; every run in docs/screen-without-bf16.md,
docs/cpu-recipe-runs.md and docs/benchmarks-history.md, "The record"). On 2 Zen 3 cores (AVX2) 128 x 6 beat 96 x 6
by 0.012 at 3.46 tokens per parameter and 128 x 8 at every speed tried, up to one 17% faster than the fastest hour.
A candidate that could not see enough tokens even at the machine's matmul peak (`matmul_peak_flops`, which no
training step reaches) is not measured either: without bf16 units (one emulated core) that skips 192 x 8 and
160 x 8 (0.61 and 1.02 tokens per parameter measured; at most 0.84 and 1.47 at the peak), and the run's tenth
step ends 44 s after its start instead of 63 s.
An explicit `--config_overrides` or `--model_preset` wins: then no candidate is measured.
"""
import time
from collections.abc import Callable

import torch

from .configuration_tinygpt import TinyGPTConfig
from .modeling_tinygpt import TinyGPTForCausalLM
from .optim import build_muon_with_adamw, prepare_for_cpu_training
from .throughput import matmul_peak_flops, model_flops_per_token

# Estimated at the start, as the rule reads them. Shapes that lost to a smaller one: 128 x 8 on 2 Zen 3 cores
# (float32, 2026-12-07) at 2.09, 2.23 and 2.51, 0.013, 0.008 and 0.010 bits per byte behind 96 x 6, 96 x 6 and 128 x 6
# run beside it; 128 x 8 at 1.35-1.67 on older AVX2 machines. Shapes that won or tied: 128 x 6 there at 3.46 (twice
# 0.012 ahead of 96 x 6) and at 2.4 (level). With bf16 units 192 x 8 is estimated at 2.94-3.45 since 7a29676
# (3.14-3.41 with batches of 32), so it stays chosen there. The one run on the other side: 192 x 8 with bf16 units at
# 2.21 (2.76 in the run; the compiled bf16 estimate reads slow) beat 160 x 8 by 0.005 on 2026-12-05. 128 x 8 is no
# longer a candidate: given the steps a 17% faster hour would give it (1,320; 2.95 tokens per parameter), it still
# ended 0.008 behind 128 x 6 given as many seconds (1,560 steps): it lost at every speed measured.
TOKENS_PER_PARAMETER = 2.7
# Heads of 32: at 192 x 8, compiled bf16, 3 heads of 64 step 14% faster than 6 of 32 (bench_train_step --heads 3)
# but learn less per step (held-out 2.45 nats against 2.34 at step ~2,370; benchmarks-history.md, "Probes").
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


def measure_tokens_per_s(model: TinyGPTForCausalLM, args, block_size: int, steps: int = 3) -> float:
    """Training tokens per second of a fresh `model` with the run's batch, precision, compilation and optimizer
    (the first steps, which allocate and compile, are not timed). The steps train it: measure a throwaway."""
    config = model.train().config
    optimizer = build_muon_with_adamw(model, args, {n for n, p in model.named_parameters() if p.ndim == 2}) \
        if args.muon else torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    ids = torch.randint(0, config.vocab_size, (args.per_device_train_batch_size, block_size))
    device = "cuda" if torch.cuda.is_available() and not args.use_cpu else "cpu"
    model.to(device)
    ids = ids.to(device)
    prepare_for_cpu_training(model, args)
    if args.torch_compile:  # as Trainer compiles it; inductor's cache then spares the run most of its compiling
        model = torch.compile(model, backend=args.torch_compile_backend, mode=args.torch_compile_mode)
    seconds = [training_step(model, optimizer, ids, args.bf16, args.max_grad_norm)
               for _ in range(steps + 1 + args.torch_compile)]  # untimed: the first (allocates; compiles), a warm-up
    return ids.numel() / (sum(seconds[-steps:]) / steps)


def training_step(model, optimizer, ids: torch.Tensor, bf16: bool, max_grad_norm: float = 1.0) -> float:
    """Seconds of one training step as Trainer takes it (the loss under bf16 autocast or not, backward, gradient
    clipping, the optimizer): the one step that shapes are measured with (and bench_train_step.py times)."""
    device = ids.device.type
    start = time.perf_counter()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def pick_shape(candidates: str, make_config: Callable[[dict], TinyGPTConfig], args, block_size: int,
               seconds_left: float) -> tuple[dict, dict]:
    """(config overrides of the chosen shape, the decision with every candidate's measurement).
    make_config: the run's fresh config with the given overrides."""
    models = [TinyGPTForCausalLM(make_config(shape_overrides(hidden, layers)))
              for hidden, layers in parse_shapes(candidates)]
    models.sort(key=lambda model: -model.num_parameters())  # the largest first
    # no training step reaches the machine's matmul peak: a shape too large even at the peak is not measured
    peak = matmul_peak_flops(torch.bfloat16 if args.bf16 else torch.float32) * args.world_size
    measured, skipped, chosen = [], [], None
    for model in models:
        config, parameters = model.config, model.num_parameters()
        at_peak = peak / model_flops_per_token(model, block_size) * seconds_left * (1 - FINAL_SHARE) / parameters
        if at_peak < TOKENS_PER_PARAMETER and model is not models[-1]:
            skipped.append({"shape": f"{config.hidden_size}x{config.num_hidden_layers}", "parameters": parameters,
                            "tokens_per_parameter_at_peak": round(at_peak, 2)})
            continue
        started = time.perf_counter()
        # measured by one process; each of the run's processes trains its own batches at this speed
        tokens_per_s = measure_tokens_per_s(model, args, block_size) * args.world_size
        tokens = tokens_per_s * (seconds_left * (1 - FINAL_SHARE) - (time.perf_counter() - started))
        measured.append({"shape": f"{config.hidden_size}x{config.num_hidden_layers}", "parameters": parameters,
                         "tokens_per_s": round(tokens_per_s), "expected_tokens": round(tokens),
                         "tokens_per_parameter": round(tokens / parameters, 2)})
        seconds_left -= time.perf_counter() - started
        if measured[-1]["tokens_per_parameter"] >= TOKENS_PER_PARAMETER:
            chosen = measured[-1]  # the largest that fits: the smaller ones need not be measured
            break
    chosen = chosen or measured[-1]  # none fits: the smallest
    hidden, layers = map(int, chosen["shape"].split("x"))
    decision = {"chosen": chosen["shape"], "candidates": measured, "too_large_at_peak": skipped,
                "rule": f"largest with >= {TOKENS_PER_PARAMETER} tokens per parameter, else the smallest"}
    words = [f"{m['shape']} too large (at most {m['tokens_per_parameter_at_peak']} tokens/parameter at the "
             "matmul peak)" for m in skipped]
    words += [f"{m['shape']} {m['tokens_per_s']:,} tokens/s ({m['tokens_per_parameter']} tokens/parameter)"
              for m in measured]
    print(f"shape for this machine: {', '.join(words)} -> {chosen['shape']}", flush=True)
    return shape_overrides(hidden, layers), decision
