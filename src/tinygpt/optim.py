"""Optimizers and precision for training on the machine at hand.

`--muon`: torch.optim.Muon for the 2-D weight matrices inside the blocks (attention and MLP projections), AdamW
for everything else (embeddings, output head, LayerNorms, biases), as Muon's authors prescribe. One optimizer
object for Trainer (`MuonWithAdamW`), one learning rate for both: Muon scales its update to AdamW's RMS
("match_rms_adamw"), so the schedule drives both groups alike.

torch's Muon orthogonalises the update in bfloat16, which CPUs without bfloat16 units (AVX2-only, for example)
run about 100x slower than float32: there the Newton-Schulz iteration runs in float32 instead (measured once,
by `fast_bfloat16()`, which also decides `--bf16_if_fast`).
"""

import functools
import time
from unittest import mock

import torch
from torch.optim import _muon


@functools.lru_cache(maxsize=1)
def fast_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices faster than float32 ones (measured, about 0.1 s)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(256, 256).to(dtype)
        a @ a
        start = time.perf_counter()
        for _ in range(3):
            a @ a
        seconds[dtype] = time.perf_counter() - start
    return seconds[torch.bfloat16] < 0.8 * seconds[torch.float32]


def _newton_schulz_float32(grad, ns_coefficients, ns_steps, eps):
    """torch's quintic Newton-Schulz iteration (torch.optim._muon), in float32."""
    a, b, c = ns_coefficients
    x = grad.float()
    if grad.size(0) > grad.size(1):
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if grad.size(0) > grad.size(1) else x


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon for `muon_params`, AdamW for the `adamw_groups`, stepped together. The param groups are shared with
    the two inner optimizers, so a learning-rate scheduler on this optimizer drives both."""

    def __init__(self, muon_params, adamw_groups, lr: float, weight_decay: float, betas=(0.9, 0.95),
                 eps: float = 1e-8, momentum: float = 0.95, adjust_lr_fn: str = "match_rms_adamw"):
        self.muon = torch.optim.Muon(muon_params, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                     adjust_lr_fn=adjust_lr_fn)
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, eps=eps)
        self.float32_orthogonalisation = not fast_bfloat16()
        super().__init__(self.muon.param_groups + self.adamw.param_groups, defaults={})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        if self.float32_orthogonalisation:
            with mock.patch.object(_muon, "_zeropower_via_newtonschulz", _newton_schulz_float32):
                self.muon.step()
        else:
            self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self):
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict):
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])


def muon_parameter_names(model) -> set[str]:
    """The 2-D weights inside the transformer blocks; embeddings and the output head stay with AdamW."""
    return {name for name, p in model.named_parameters()
            if p.requires_grad and p.ndim == 2 and ".layers." in name}


def build_muon_with_adamw(model, args, decay_names: set[str]) -> MuonWithAdamW:
    """From TrainingArguments: learning_rate, weight_decay (both groups), adam_beta1/2, adam_epsilon."""
    muon = muon_parameter_names(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n not in muon and n in decay_names], "weight_decay": args.weight_decay},
              {"params": [p for n, p in named if n not in muon and n not in decay_names], "weight_decay": 0.0}]
    return MuonWithAdamW([p for n, p in named if n in muon], [g for g in groups if g["params"]],
                         lr=args.learning_rate, weight_decay=args.weight_decay,
                         betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
