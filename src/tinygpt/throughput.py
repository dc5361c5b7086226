"""How fast a run trains, against what the machine can do: model FLOP/s and its share of the matmul peak.

    model FLOPs per token = 6 * (matrix parameters, output head included) + 12 * layers * hidden * block
                            (PaLM's count: forward + backward of every matrix product and of the attention
                            scores and their weighting, the causal mask not discounted)
    achieved FLOP/s       = model FLOPs per token * training tokens per second (the median step, evaluations
                            and saving left out)
    share of peak         = achieved / the peak of one large matrix product in the precision of the run,
                            measured on this machine with all of torch's threads

The figures go into `training_summary.json` ("throughput") and the model card's training section;
`benchmarks/bench_train_step.py` reports them for the recipe's step in variants.
"""

import os
import platform
import statistics
import time
from functools import lru_cache

import torch
from transformers import TrainerCallback


def model_flops_per_token(model, block_size: int) -> int:
    """PaLM's model FLOPs per trained token (above). Embedding lookups are not products and do not count."""
    config = model.config
    embeddings = {id(module.weight) for module in model.modules() if isinstance(module, torch.nn.Embedding)}
    matrices = sum(p.numel() for p in model.parameters() if p.ndim == 2 and id(p) not in embeddings)
    if getattr(config, "tie_word_embeddings", False):  # the tied head is a product all the same
        matrices += model.get_input_embeddings().weight.numel()
    return 6 * matrices + 12 * config.num_hidden_layers * config.hidden_size * block_size


@lru_cache(maxsize=8)
def matmul_peak_flops(dtype: torch.dtype = torch.float32, repeats: int = 5, size: int | None = None,
                      min_seconds: float = 0.0, clock=time.perf_counter) -> float:
    """FLOP/s of a square matrix product on this machine's CPU (1024: the size the CPU reaches its peak at), or
    GPU (8192, 10 products per timing: a GPU needs that much work to reach its own): the best of `repeats`
    timings, or of as many as `min_seconds` take (a product of 256 takes 0.05-0.1 ms: a brief stall of the core
    would slow every one of a few). The one timing of matrix products: `fast_bfloat16` compares two small ones
    (`size`)."""
    device, peak_size, products = ("cuda", 8192, 10) if torch.cuda.is_available() else ("cpu", 1024, 1)
    size = size or peak_size
    a = torch.randn(size, size, device=device).to(dtype)
    a @ a  # warm-up
    best, timed, started = float("inf"), 0, clock()
    while timed < repeats or clock() - started < min_seconds:
        if device == "cuda":
            torch.cuda.synchronize()
        start = clock()
        for _ in range(products):
            a @ a
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, clock() - start)
        timed += 1
    return products * 2 * size**3 / best


def machine() -> dict:
    """What a figure was measured on: CPU model, torch's threads, whether bfloat16 products are fast, the GPU."""
    from .optim import fast_bfloat16

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "fast_bfloat16": fast_bfloat16(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


class StepTimer(TrainerCallback):
    """Seconds between the ends of consecutive training steps with no evaluation or saving between them: the one
    timing of training steps (a TimeBudget plans with its own, and the run's throughput is reported from it).
    clock: seconds (`time.perf_counter`; a budget gives its wall clock, the tests a fake one)."""

    def __init__(self, clock=time.perf_counter):
        self.seconds: list[float] = []
        self.clock = clock
        self._last_end: float | None = None
        self._interrupted = False

    def on_step_end(self, args, state, control, **kwargs):
        now = self.clock()
        if self._last_end is not None and not self._interrupted:
            self.seconds.append(now - self._last_end)
        self._last_end, self._interrupted = now, False

    def on_evaluate(self, args, state, control, **kwargs):
        self._interrupted = True

    def on_save(self, args, state, control, **kwargs):
        self._interrupted = True

    def report(self, model, tokens_per_step: int, block_size: int, bf16: bool) -> dict:
        """The run's throughput (module docstring); empty before two uninterrupted steps."""
        steady = self.seconds[1:]  # the first may hold warm-up
        if not steady:
            return {}
        step_s = statistics.median(steady)
        per_token = model_flops_per_token(model, block_size)
        achieved = per_token * tokens_per_step / step_s
        dtype = torch.bfloat16 if bf16 else torch.float32
        peak = matmul_peak_flops(dtype)
        return {"seconds_per_step": round(step_s, 4), "tokens_per_s": round(tokens_per_step / step_s),
                "model_flops_per_token": per_token, "model_gflops_per_s": round(achieved / 1e9, 1),
                "precision": str(dtype).removeprefix("torch."), "matmul_peak_gflops_per_s": round(peak / 1e9, 1),
                "share_of_peak": round(achieved / peak, 3)}
