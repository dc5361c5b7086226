"""TinyGPT against transformers' GPTNeoForCausalLM, same config and same weights, on this machine's CPU.

    python benchmarks/bench_model.py                 # the whole table, about 10 minutes on 2 cores
    python benchmarks/bench_model.py --quick         # fewer repeats, for a smoke test
    python benchmarks/bench_model.py --compiled_training   # plus bf16 training with torch.compile (both models)

Measured, alternating the two models after a warm-up, medians over the repeats:
- training step throughput (tokens/s) and peak memory, batch 4 x 512, float32 and bfloat16 autocast, AdamW
  (each in a fresh process, so peak RSS above the loaded model and optimizer is the step's own memory);
- prefill latency of 512 tokens at batch 1;
- greedy generation tokens/s at batch 1 and 8 (256 new tokens), and at a long context (a 2,048-position
  variant generating 1,500 tokens), with the KV-cache bytes held at the end; TinyGPT both eager and with the
  optional compiled decode step (tinygpt.compiled.CompiledGenerator; its compile time is in the warm-up);
- the same training and batch-1 generation figures for the CPU preset's model.
Also: model FLOP utilisation against a measured matrix-product peak, and batch-1 generation speed against the
memory-bandwidth bound (bytes of weights read per token / measured read bandwidth).
"""

import json
import resource
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import torch
from transformers import GPTNeoForCausalLM, HfArgumentParser

from tinygpt import TinyGPTConfig, TinyGPTForCausalLM
from tinygpt.compiled import CompiledGenerator
from tinygpt.convert import tinygpt_config_to_gpt_neo, tinygpt_to_gpt_neo


@dataclass
class Args:
    quick: bool = False
    compiled_training: bool = False  # also train the seed model in bf16 with torch.compile, both models (+2 min)
    train_worker: str | None = None  # internal: "model,preset,precision,steps,compile"


def build(preset: str, positions: int | None = None) -> dict:
    """TinyGPT eager, the same model with the compiled decode step, and GPT-Neo with the same weights."""
    overrides = {"max_position_embeddings": positions} if positions else {}
    torch.manual_seed(0)
    ours = TinyGPTForCausalLM(TinyGPTConfig.from_preset(preset, **overrides)).eval()
    return {"ours": ours, "compiled": CompiledGenerator(ours), "neo": tinygpt_to_gpt_neo(ours).eval()}


def matmul_flops(model) -> int:
    """Parameters that take part in a matrix product per token (all but embeddings, biases and norms)."""
    return sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "embed" not in n and "wte" not in n
               and "wpe" not in n)


def train_flops_per_token(model, T: int) -> float:
    c = model.config
    attention = sum(min(T, c.window_size) if t == "local" else T / 2 for t in c.attention_types) * 2 * c.hidden_size
    return 6 * matmul_flops(model) + 6 * attention  # forward 2x, backward 4x; QK^T and AV per attended key


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 1e6


def train_step(forward, optimizer, ids, precision: str) -> None:
    """One AdamW step of next-token loss on `ids`, under bfloat16 autocast when precision is "bf16"."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = forward(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_worker(spec: str) -> None:
    which, preset, precision, steps, compile_ = spec.split(",")
    config = TinyGPTConfig.from_preset(preset)
    torch.manual_seed(0)  # speed and memory do not depend on the weights: build only the measured model
    model = TinyGPTForCausalLM(config) if which == "tinygpt" else GPTNeoForCausalLM(tinygpt_config_to_gpt_neo(config))
    model.train()
    forward = torch.compile(model) if compile_ == "compile" else model  # compiles in the warm-up step
    B, T = 4, 512 if preset == "tinystories-41m" else 256
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(0))
    times, base, peak = [], 0.0, [0.0]
    sampling = threading.Event()

    def sample_rss():  # peak resident memory while the measured steps run
        while not sampling.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample_rss)
    for step in range(int(steps) + 1):
        if step == 1:  # parameters and optimizer state exist now; the peak above this is the step's own memory
            base = rss_mb()
            sampler.start()
        start = time.perf_counter()
        train_step(forward, optimizer, ids, precision)
        times.append(time.perf_counter() - start)
    sampling.set()
    sampler.join()
    print(json.dumps({"tokens_per_s": B * T / statistics.median(times[1:]), "peak_mb": peak[0] - base,
                      "flops_per_token": train_flops_per_token(model, T)}))


def run_train(which, preset, precision, steps, compile_="eager") -> dict:
    spec = f"{which},{preset},{precision},{steps},{compile_}"
    out = subprocess.run([sys.executable, __file__, "--train_worker", spec],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


@torch.no_grad()
def generate_rate(model, batch: int, new_tokens: int, prompt: int = 16) -> tuple[float, int]:
    """model: a model or a CompiledGenerator. Returns tokens/s and the bytes the cache holds at the end."""
    config = model.model.config if isinstance(model, CompiledGenerator) else model.config
    ids = torch.randint(0, config.vocab_size - 1, (batch, prompt), generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=config.eos_token_id,
                         return_dict_in_generate=True)
    elapsed = time.perf_counter() - start
    cache = out.cache
    cache_bytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
                      if t is not None)
    return batch * new_tokens / elapsed, cache_bytes


@torch.no_grad()
def prefill_ms(model, T=512) -> float:
    ids = torch.randint(0, model.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(2))
    start = time.perf_counter()
    model(ids, use_cache=True)
    return 1e3 * (time.perf_counter() - start)


def alternate(fn, models: dict, repeats: int) -> dict:
    """fn(model) for each model in turn, `repeats` rounds after one warm-up round; medians."""
    for model in models.values():
        fn(model)
    results = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            results[name].append(fn(model))
    return {name: statistics.median(values) for name, values in results.items()}


def machine_peaks() -> dict:
    peaks = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        a @ b
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        peaks[str(dtype).split(".")[1]] = 5 * 2 * 2048**3 / (time.perf_counter() - start) / 1e9
    x = torch.ones(256 * 1024 * 1024 // 4 * 4)  # 1 GiB of float32
    x.sum()
    start = time.perf_counter()
    for _ in range(3):
        x.sum()
    peaks["read_gb_s"] = 3 * x.numel() * 4 / (time.perf_counter() - start) / 1e9
    return peaks


def weight_bytes_per_token(model) -> int:
    """Bytes read per generated token at batch 1: every matrix (embedding rows aside) and the small vectors."""
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters()
               if "embed" not in n and "wte" not in n and "wpe" not in n)


def row(name, ours, theirs, unit, fmt="{:,.0f}", higher_is_better=True):
    ratio = ours / theirs if higher_is_better else theirs / ours
    return f"| {name} | {fmt.format(ours)} | {fmt.format(theirs)} | {unit} | {ratio:.2f}x |"


def main():
    (args,) = HfArgumentParser(Args).parse_args_into_dataclasses()
    if args.train_worker:
        return train_worker(args.train_worker)
    torch.set_grad_enabled(False)
    steps, repeats = (2, 1) if args.quick else (4, 3)
    peaks = machine_peaks()
    lines = [f"machine: {torch.get_num_threads()} threads; float32 matmul {peaks['float32']:.0f} GFLOP/s, "
             f"bfloat16 {peaks['bfloat16']:.0f} GFLOP/s, memory read {peaks['read_gb_s']:.1f} GB/s", "",
             "| measurement | TinyGPT | GPT-Neo | unit | TinyGPT advantage |", "|---|--:|--:|---|--:|"]
    mfu = []
    for preset, label in (("tinystories-41m", "seed 41M, batch 4 x 512"), ("tinystories-cpu", "CPU preset, 4 x 256")):
        for precision in ("fp32", "bf16"):
            ours = run_train("tinygpt", preset, precision, steps)
            neo = run_train("gpt-neo", preset, precision, steps)
            lines.append(row(f"training {precision}, {label}", ours["tokens_per_s"], neo["tokens_per_s"], "tokens/s"))
            lines.append(row(f"training {precision} peak memory, {label}", ours["peak_mb"], neo["peak_mb"], "MB",
                             higher_is_better=False))
            peak = peaks["float32" if precision == "fp32" else "bfloat16"]
            mfu.append(f"{label} {precision}: TinyGPT {100 * ours['tokens_per_s'] * ours['flops_per_token'] / 1e9 / peak:.0f}%"
                       f", GPT-Neo {100 * neo['tokens_per_s'] * neo['flops_per_token'] / 1e9 / peak:.0f}% of the "
                       f"{precision} matmul peak")
        if args.compiled_training and preset == "tinystories-41m":
            ours = run_train("tinygpt", preset, "bf16", steps, "compile")
            neo = run_train("gpt-neo", preset, "bf16", steps, "compile")
            lines.append(row(f"training bf16, {label}, both models torch.compile'd", ours["tokens_per_s"],
                             neo["tokens_per_s"], "tokens/s"))
        models = build(preset)
        eager = {"ours": models["ours"], "neo": models["neo"]}
        short = label.split(",")[0]
        if preset == "tinystories-41m":
            prefill = alternate(prefill_ms, eager, repeats)
            lines.append(row("prefill latency, 512 tokens, batch 1", prefill["ours"], prefill["neo"], "ms",
                             higher_is_better=False))
        for batch in ((1, 8) if preset == "tinystories-41m" else (1,)):
            rates = alternate(lambda m: generate_rate(m, batch, 256)[0], models, repeats)
            name = f"greedy generation, batch {batch}, 256 new tokens ({short})"
            lines.append(row(name, rates["ours"], rates["neo"], "tokens/s", "{:,.1f}"))
            lines.append(row(name + ", compiled decode", rates["compiled"], rates["neo"], "tokens/s", "{:,.1f}"))
            if batch == 1:
                weights = weight_bytes_per_token(models["ours"])
                bound = peaks["read_gb_s"] * 1e9 / weights
                mfu.append(f"{short} batch-1 generation: TinyGPT {100 * rates['ours'] / bound:.0f}% eager, "
                           f"{100 * rates['compiled'] / bound:.0f}% compiled, GPT-Neo {100 * rates['neo'] / bound:.0f}%"
                           f" of the memory-bandwidth bound ({bound:.0f} tokens/s = {peaks['read_gb_s']:.1f} GB/s / "
                           f"{weights / 1e6:.0f} MB of weights)")
    models = build("tinystories-41m", positions=2048)
    generate_rate(models["compiled"], 1, 1500)  # warm-up: compiles for this cache length
    long = {name: generate_rate(model, 1, 1500) for name, model in models.items()}
    name = "greedy generation, long context (2,048 positions, 1,500 new tokens)"
    lines.append(row(name, long["ours"][0], long["neo"][0], "tokens/s", "{:,.1f}"))
    lines.append(row(name + ", compiled decode", long["compiled"][0], long["neo"][0], "tokens/s", "{:,.1f}"))
    lines.append(row("KV cache held after 1,516 tokens", long["ours"][1] / 1e6, long["neo"][1] / 1e6, "MB",
                     "{:,.1f}", higher_is_better=False))
    lines.append(row("KV cache held after 1,516 tokens, compiled decode (static, 1,536 slots)",
                     long["compiled"][1] / 1e6, long["neo"][1] / 1e6, "MB", "{:,.1f}", higher_is_better=False))
    print("\n".join(lines))
    print("\nmodel FLOP utilisation and bandwidth:\n" + "\n".join(f"- {line}" for line in mfu))


if __name__ == "__main__":
    main()
