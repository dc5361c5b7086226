"""The CPU recipe's training step, side by side in variants, with model FLOP/s against this machine's peak.

    python benchmarks/bench_train_step.py                    # about 3 minutes on 2 cores
    python benchmarks/bench_train_step.py --shape 256x4      # another width x depth
    python benchmarks/bench_train_step.py --heads 3          # 192 x 8 with 3 heads of 64 instead of 6 of 32
    python benchmarks/bench_train_step.py --malloc default   # glibc's allocator defaults instead of the recipe's
    CUDA_VISIBLE_DEVICES= python benchmarks/bench_train_step.py --threads 2   # 2 cores of a bigger CPU

The step of `--preset cpu` (batch 16 x 256 by default, as the tables in BENCHMARKS.md; the preset trains 32 x 256 since
2026-12-06, `--batch 32`; Muon 4e-3 + AdamW, gradient clipping, float32 or the bf16 autocast
that `--bf16_if_fast` picks) in variants that add one change at a time:
- committed: the output head's full float32 logits and transformers' cross-entropy (the eval-mode forward path),
  Muon orthogonalising one matrix at a time, AdamW's foreach implementation;
- chunked loss: the training forward path, `LinearCrossEntropy` (no full logits);
- + batched Muon, fused AdamW: tinygpt.optim as it is (the recipe's float32 step);
- + compiled, eager attention: the model `torch.compile`d with the eager attention (compile time reported
  separately);
- + GELU from sigmoid: and its MLPs' gelu_new computed as x sigmoid(2z) (tinygpt.optim.prepare_for_cpu_training
  makes both changes): the recipe's step where `--bf16_if_fast` picks bf16;
- GPT-Neo: transformers' GPTNeoForCausalLM at the same shape, AdamW (the reference implementation).
Medians over the timed steps after a warm-up, variants interleaved round by round so drift hits all alike; then
torch.profiler over the recipe's step by op family, each family's share and, for the matrix products and the
attention, its own FLOP/s. Results as JSON lines and a table; `--out FILE` keeps the JSON.
"""

import copy
import json
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import GPTNeoForCausalLM, HfArgumentParser

from tinygpt import TinyGPTConfig, TinyGPTForCausalLM
from tinygpt.convert import tinygpt_config_to_gpt_neo
from tinygpt.optim import (Muon, MuonWithAdamW, fast_bfloat16, keep_freed_memory, muon_parameter_names,
                           orthogonalise, prepare_for_cpu_training)
from tinygpt.shape import shape_overrides, training_step
from tinygpt.throughput import machine, matmul_peak_flops, model_flops_per_token


@dataclass
class Args:
    shape: str = "192x8"  # hidden x layers (heads of 32, as --auto_shape builds them)
    heads: int | None = None  # another head count, e.g. 3 for 192 x 8 with heads of 64
    batch: int = 16
    block: int = 256
    rounds: int = 6  # timed steps per variant, interleaved
    compile: bool = True
    threads: int | None = None  # torch's threads (default: all cores), e.g. 2 to stand in for a 2-core machine
    malloc: str = "keep"  # keep: freed memory kept for reuse, as train_hf.py trains on a CPU; default: glibc's own
    out: str | None = None


class OneAtATimeMuon(Muon):
    """The committed Muon: the same update, one matrix at a time."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                buffer = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buffer.lerp_(p.grad, 1 - group["momentum"])
                update = orthogonalise(p.grad.lerp(buffer, group["momentum"])[None], self.ns_dtype)[0]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * 0.2 * max(p.shape) ** 0.5)


def optimizer(model, committed: bool):
    muon = muon_parameter_names(model)
    rest = [p for n, p in model.named_parameters() if n not in muon]
    opt = MuonWithAdamW([p for n, p in model.named_parameters() if n in muon], [{"params": rest}], lr=4e-3,
                        weight_decay=0.1)
    if committed:
        opt.muon = OneAtATimeMuon(opt.muon.param_groups[0]["params"], lr=4e-3, weight_decay=0.1)
        opt.adamw = torch.optim.AdamW([{"params": rest}], lr=4e-3, betas=(0.9, 0.95), foreach=True)
    return opt


def variant(name: str, config: TinyGPTConfig, bf16: bool):
    """(model, optimizer, train mode?) for one variant; the model's weights do not matter for speed."""
    torch.manual_seed(0)
    if name == "GPT-Neo":
        model = GPTNeoForCausalLM(tinygpt_config_to_gpt_neo(config))
        return model, torch.optim.AdamW(model.parameters(), lr=4e-3, betas=(0.9, 0.95), fused=True), True
    model = TinyGPTForCausalLM(copy.deepcopy(config))  # its own config: the attention set below is the config's
    opt = optimizer(model, committed=name in ("committed", "chunked loss"))
    if name == "+ compiled, eager attention":
        model.set_attn_implementation("eager")
    if name == "+ GELU from sigmoid":  # as a --bf16_if_fast run on a CPU with bf16 units trains it
        prepare_for_cpu_training(model, SimpleNamespace(torch_compile=True, use_cpu=True))
    if name in ("+ compiled, eager attention", "+ GELU from sigmoid"):
        model = torch.compile(model)
    # eval mode = the full-logits loss path (the model has no dropout, so the function is the same)
    return model, opt, name != "committed"


def step(model, opt, train_mode: bool, ids, bf16: bool) -> float:
    model.train(train_mode)
    return training_step(model, opt, ids, bf16)  # the step --auto_shape measures (tinygpt.shape)


FAMILIES = {"matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
            "attention (SDPA forward + backward)": ("scaled_dot_product", "flash_attention"),
            "loss: softmax passes over the logits chunks": ("aten::exp", "aten::sub", "aten::amax", "aten::sum",
                                                            "scatter", "gather", "log_softmax", "nll_loss"),
            "GELU": ("gelu",), "layer norm": ("layer_norm",),
            "optimizer (Muon, AdamW, clipping)": ("_foreach", "adam", "lerp", "norm", "muon")}


def profile_families(model, opt, ids, bf16: bool, config, block: int) -> dict:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            step(model, opt, True, ids, bf16)
    totals = defaultdict(float)
    for event in prof.key_averages():
        key = event.key.lower()
        fam = next((f for f, words in FAMILIES.items() if any(w in key for w in words)), "other")
        totals[fam] += event.self_cpu_time_total / 1e3 / 2  # ms per step
    whole = sum(totals.values())
    B, T, C, L = ids.shape[0], ids.shape[1], config.hidden_size, config.num_hidden_layers
    matrices = model_flops_per_token(model, block) - 12 * L * C * block  # 6 x matrix parameters
    own = {"matrix products": matrices * B * T, "attention (SDPA forward + backward)": 12 * L * C * T * B * T}
    return {fam: {"ms_per_step": round(ms, 1), "share": round(ms / whole, 3),
                  **({"gflops_per_s": round(own[fam] / ms / 1e6, 1)} if fam in own else {})}
            for fam, ms in sorted(totals.items(), key=lambda kv: -kv[1])}


def main(argv=None) -> None:
    (args,) = HfArgumentParser(Args).parse_args_into_dataclasses(args=argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.malloc not in ("keep", "default"):
        raise SystemExit(f"--malloc {args.malloc!r}: keep or default")
    kept = args.malloc == "keep" and keep_freed_memory()  # process-wide: every variant alike
    hidden, layers = map(int, args.shape.split("x"))
    shape = shape_overrides(hidden, layers) | ({"num_attention_heads": args.heads} if args.heads else {})
    config = TinyGPTConfig.from_preset("tinystories-cpu", **shape, vocab_size=8001,
                                       max_position_embeddings=args.block)
    bf16 = fast_bfloat16()  # what --bf16_if_fast picks on this machine
    ids = torch.randint(0, config.vocab_size, (args.batch, args.block), generator=torch.Generator().manual_seed(0))
    names = ["committed", "chunked loss", "+ batched Muon, fused AdamW"] + \
        (["+ compiled, eager attention", "+ GELU from sigmoid"] if args.compile else []) + ["GPT-Neo"]
    built, warm = {}, {}
    for name in names:
        built[name] = variant(name, config, bf16)
        start = time.perf_counter()
        for _ in range(2):
            step(*built[name], ids, bf16)
        warm[name] = time.perf_counter() - start  # compilation shows here
    times = defaultdict(list)
    for _ in range(args.rounds):
        for name in names:
            times[name].append(step(*built[name], ids, bf16))
    peak = matmul_peak_flops(torch.bfloat16 if bf16 else torch.float32)
    per_token = model_flops_per_token(built["committed"][0], args.block)
    tokens = args.batch * args.block
    results = {"machine": machine(), "precision": "bfloat16 autocast" if bf16 else "float32",
               "shape": args.shape, "heads": config.num_attention_heads, "batch": [args.batch, args.block],
               "malloc": "freed memory kept (mallopt)" if kept else "glibc's defaults",
               "matmul_peak_gflops_per_s": round(peak / 1e9, 1),
               "model_flops_per_token": per_token, "variants": {}}
    base = statistics.median(times["committed"])
    for name in names:
        s = statistics.median(times[name])
        results["variants"][name] = {"ms_per_step": round(1e3 * s, 1), "tokens_per_s": round(tokens / s),
                                     "speed_vs_committed": round(base / s, 2),
                                     "model_gflops_per_s": round(per_token * tokens / s / 1e9, 1),
                                     "share_of_peak": round(per_token * tokens / s / peak, 3),
                                     "warm_up_s": round(warm[name], 1)}
    neo = statistics.median(times["GPT-Neo"])
    for name in names:
        results["variants"][name]["speed_vs_gpt_neo"] = round(neo / statistics.median(times[name]), 2)
    model, opt, _ = built["+ batched Muon, fused AdamW"]
    results["profile_of_the_recipe_step"] = profile_families(model, opt, ids, bf16, config, args.block)
    print(json.dumps(results, indent=1))
    print(f"\n{results['machine']['cpu']}, {results['precision']}, peak {results['matmul_peak_gflops_per_s']} GFLOP/s")
    print(f"{'variant':32} {'ms/step':>8} {'tokens/s':>9} {'x committed':>11} {'x GPT-Neo':>9} {'GFLOP/s':>8} {'of peak':>7}")
    for name, r in results["variants"].items():
        print(f"{name:32} {r['ms_per_step']:8.0f} {r['tokens_per_s']:9,} {r['speed_vs_committed']:11.2f} "
              f"{r['speed_vs_gpt_neo']:9.2f} {r['model_gflops_per_s']:8.1f} {r['share_of_peak']:7.0%}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
