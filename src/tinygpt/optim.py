"""Optimizers, precision, compilation and memory for training on the machine at hand.

`--muon`: Muon for the 2-D weight matrices inside the blocks (attention and MLP projections), AdamW for
everything else (embeddings, output head, LayerNorms, biases), as Muon's authors prescribe. One optimizer
object for Trainer (`MuonWithAdamW`), one learning rate for both: Muon scales its update to AdamW's RMS
("match_rms_adamw"), so the schedule drives both groups alike.

`Muon` is `torch.optim.Muon`'s algorithm (same update, same state, tested against it) with two changes that
torch's class has no argument for: the Newton-Schulz iteration runs in float32 on CPUs without bfloat16 units
(AVX2-only, for example, multiply bfloat16 about 100x slower than float32; `fast_bfloat16()` measures it once),
and matrices of one shape are orthogonalised together in batched products, which is a third of the optimizer's
time at the CPU recipe's 32 small matrices.
"""

import ctypes
import functools
import math
import os
import shutil

import torch

from .throughput import matmul_peak_flops


@functools.lru_cache(maxsize=1)
def fast_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices faster than float32 ones (measured, about 0.1 s): 256-wide
    products, small enough to take little time where bfloat16 is ~100x slower (AVX2-only CPUs), on one thread,
    each dtype for 50 ms. A property of the CPU's units, so measured where another process cannot move it: with
    one busy on one of 2 cores, the 2-thread bfloat16 product ran at 4-8 GFLOP/s (its threads wait for each other)
    and the check chose float32 on a CPU with bf16 units in 5 of 8 fresh processes (a run given float32 that way
    trained 224 x 8 at 1.26 s per step, against 0.45 in bf16); on one thread, 8 of 8 chose bf16 (about 450 against
    113 GFLOP/s; docs/benchmarks-history.md)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return (matmul_peak_flops(torch.bfloat16, 3, 256, min_seconds=0.05)
                > 1.25 * matmul_peak_flops(torch.float32, 3, 256, min_seconds=0.05))
    finally:
        torch.set_num_threads(threads)


def compile_pays(args) -> bool:
    """Whether --bf16_if_fast also compiles the model (TrainingArguments' torch_compile): on a CPU training in
    bf16, with a C++ compiler for inductor ($CXX, else g++).

    Measured with benchmarks/bench_train_step.py (2 cores of a Zen 5 EPYC, 2026-12-05): the bf16 step 1.44x
    faster compiled at 160 x 8 (373 -> 259 ms) and 1.40x at 192 x 8 (497 -> 356 ms; inductor fuses the casts, GELU
    and the attention's softmax), the float32 step no faster (728 -> 746 ms); compiling costs 20-30 s once.
    """
    return bool(args.bf16 and args.use_cpu and shutil.which(os.environ.get("CXX", "g++")))


# mallopt(3)'s parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a training step frees, for the next step to reuse (mallopt(3): no
    mmap'd allocations, no trimming of the heap); whether it applied (False where the C library is not glibc).

    A CPU training step frees and allocates the same large buffers every step: the gradients (Trainer sets them
    to None), the activations, the loss's logits chunks (1,024 x 8,001 float32, 33 MB). By default glibc serves
    every allocation over its mmap threshold (at most 32 MB) with fresh pages from the kernel and returns them
    at free, so each step pays for unmapping its memory and for faulting it in, zeroed, again. Measured on 2 cores
    of a Zen 5 EPYC (2026-12-05, 192 x 8, compiled bf16, the recipe's command with --time_budget 3, this function
    against a no-op): 470 -> 345 ms per step in Trainer, peak memory 1.67 -> 2.21 GB (BENCHMARKS.md, "The training
    step"). The heap then stays at the run's peak size. Process-wide: call it in a process that trains or
    evaluates (`tinygpt eval` does)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


class SigmoidGELU(torch.nn.Module):
    """gelu_new, 0.5 x (1 + tanh(z)) with z = sqrt(2/pi) (x + 0.044715 x^3), written as x sigmoid(2z): the same
    function (tanh(z) = 2 sigmoid(2z) - 1; within 5e-7 of torch's in float32). Compiled, inductor computes sigmoid
    from its vectorised exp, far faster than its tanh: forward + backward at (4096, 768) in bf16 on 2 cores of a
    Zen 5 EPYC, 4.2 -> 1.8 ms. Uncompiled, its five elementwise ops are no faster than torch's one kernel."""

    def forward(self, x):
        return x * torch.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))


def prepare_for_cpu_training(model, args) -> None:
    """What a model compiled for training on a CPU computes differently, for speed, with the same function
    (bench_train_step.py):
    - it attends with the eager path: inductor fuses its mask, softmax and casts around the matrix products,
      while SDPA's CPU kernel is one call it cannot fuse and is slower at heads of 32;
    - its MLPs' gelu_new is `SigmoidGELU`: the recipe's bf16 step at 192 x 8, 336 -> 321 ms (2026-12-06).
    Saved models keep neither: they load with the default attention and torch's GELU."""
    if not (args.torch_compile and args.use_cpu):
        return
    model.set_attn_implementation("eager")
    for module in model.modules():
        act = getattr(module, "act", None)
        if isinstance(act, torch.nn.GELU) and act.approximate == "tanh":
            module.act = SigmoidGELU()


# torch.optim.Muon's quintic Newton-Schulz coefficients, steps and epsilon
NS_COEFFICIENTS, NS_STEPS, NS_EPS = (3.4445, -4.7750, 2.0315), 5, 1e-7


def orthogonalise(updates: torch.Tensor, dtype: torch.dtype, ns_steps: int = NS_STEPS) -> torch.Tensor:
    """torch.optim.Muon's Newton-Schulz iteration for a stack of same-shaped matrices (k, A, B), in `dtype`."""
    a, b, c = NS_COEFFICIENTS
    x = updates.to(dtype)
    tall = x.shape[-2] > x.shape[-1]  # more rows than columns: iterate on the transpose, the smaller Gram matrix
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=NS_EPS)  # spectral norm at most 1
    for _ in range(ns_steps):
        gram = x @ x.mT  # (k, A, A)
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """torch.optim.Muon (nesterov momentum, decoupled weight decay, `adjust_lr_fn` "original" or
    "match_rms_adamw") with the Newton-Schulz iteration in `ns_dtype` (default: bfloat16 where this machine
    multiplies it fast, else float32) and batched over matrices of one shape."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 adjust_lr_fn: str = "original", ns_dtype: torch.dtype | None = None):
        if adjust_lr_fn not in ("original", "match_rms_adamw"):
            raise ValueError(f"adjust_lr_fn must be 'original' or 'match_rms_adamw', got {adjust_lr_fn!r}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, adjust_lr_fn=adjust_lr_fn))
        for group in self.param_groups:
            bad = [tuple(p.shape) for p in group["params"] if p.ndim != 2]
            if bad:
                raise ValueError(f"Muon takes 2-D weight matrices only, got shapes {bad}")
        self.ns_dtype = ns_dtype or (torch.bfloat16 if fast_bfloat16() else torch.float32)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            by_shape: dict[tuple, list] = {}
            for p in params:
                by_shape.setdefault(tuple(p.shape), []).append(p)
            for shape, same in by_shape.items():
                grads = [p.grad for p in same]
                for p in same:  # a zero buffer at the first step only (setdefault would allocate one every step)
                    if "momentum_buffer" not in self.state[p]:
                        self.state[p]["momentum_buffer"] = torch.zeros_like(p)
                buffers = [self.state[p]["momentum_buffer"] for p in same]
                for buffer, grad in zip(buffers, grads):
                    buffer.lerp_(grad, 1 - group["momentum"])
                nesterov = torch.stack(grads).lerp_(torch.stack(buffers), group["momentum"])  # (k, A, B)
                updates = orthogonalise(nesterov, self.ns_dtype)
                scale = 0.2 * math.sqrt(max(shape)) if group["adjust_lr_fn"] == "match_rms_adamw" else \
                    math.sqrt(max(1.0, shape[0] / shape[1]))
                for p, update in zip(same, updates.to(same[0].dtype).unbind(0)):
                    p.mul_(1 - group["lr"] * group["weight_decay"]).add_(update, alpha=-group["lr"] * scale)
        return loss


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon for `muon_params`, AdamW for the `adamw_groups`, stepped together. The param groups are shared with
    the two inner optimizers, so a learning-rate scheduler on this optimizer drives both."""

    def __init__(self, muon_params, adamw_groups, lr: float, weight_decay: float, betas=(0.9, 0.95),
                 eps: float = 1e-8, momentum: float = 0.95, adjust_lr_fn: str = "match_rms_adamw"):
        self.muon = Muon(muon_params, lr=lr, weight_decay=weight_decay, momentum=momentum, adjust_lr_fn=adjust_lr_fn)
        # fused: one kernel over all AdamW tensors (CPU and GPU alike)
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, eps=eps, fused=True)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, defaults={})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self):
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict):
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        # Loading gives the inner optimizers new param-group dicts: share them again, or a scheduler on this
        # optimizer would set learning rates that nothing reads (accelerate loads the state once when Trainer
        # prepares the optimizer, so every run goes through here, not only a resumed one).
        self.param_groups = self.muon.param_groups + self.adamw.param_groups


def muon_parameter_names(model) -> set[str]:
    """The 2-D weights inside the transformer blocks; embeddings and the output head stay with AdamW."""
    return {name for name, p in model.named_parameters()
            if p.requires_grad and p.ndim == 2 and ".layers." in name}


def adamw_groups(model, args, decay_names: set[str], exclude: set[str] = frozenset()) -> list[dict]:
    """AdamW's parameter groups: weight decay or not (`decay_names`, Trainer's choice), and the learning rate
    times `embedding_lr_multiplier` for the token and position embeddings, `head_lr_multiplier` for an untied
    output head (both 1 unless the training arguments say otherwise)."""
    multipliers = {"embed_": getattr(args, "embedding_lr_multiplier", 1.0), "lm_head": getattr(args, "head_lr_multiplier", 1.0)}
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad or name in exclude:
            continue
        multiplier = next((m for part, m in multipliers.items() if part in name), 1.0)
        decay = name in decay_names
        key = (decay, multiplier)
        groups.setdefault(key, {"params": [], "weight_decay": args.weight_decay if decay else 0.0,
                                "lr": args.learning_rate * multiplier})["params"].append(p)
    return list(groups.values())


def build_muon_with_adamw(model, args, decay_names: set[str]) -> MuonWithAdamW:
    """From TrainingArguments: learning_rate, weight_decay (both groups), muon_momentum, adam_beta1/2,
    adam_epsilon, and the AdamW groups' learning-rate multipliers (`adamw_groups`)."""
    muon = muon_parameter_names(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return MuonWithAdamW([p for n, p in named if n in muon], adamw_groups(model, args, decay_names, muon),
                         lr=args.learning_rate, weight_decay=args.weight_decay,
                         betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                         momentum=args.muon_momentum)
