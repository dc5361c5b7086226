"""Faster CPU generation: `generate()` with its decode step compiled by torch.compile and frozen weights.

    from tinygpt.compiled import CompiledGenerator
    generator = CompiledGenerator(model)          # optional; the model itself is left unchanged
    ids = generator.generate(input_ids, attention_mask=mask, max_new_tokens=200, do_sample=False)

Same arguments and same tokens as `model.generate()`; the first call for a new batch size or length bucket
compiles (10-40 s on 2 cores), later ones reuse it. Why it is faster: at batch 1 a decode step is matrix-vector
products over every weight, and torch's eager GEMV reads float32 weights well below the memory bandwidth.
Inductor's CPU GEMM template (`max_autotune`) with prepacked weights (`freezing`) streams them much faster.

Why a wrapper and not just `model.generate(cache_implementation="static", compile_config=...)`:
- freezing is honoured only when inductor's config is patched around the call that compiles (passing it in
  `torch.compile(options=...)` is silently ignored), and without it the compiled step is no faster;
- a compiled graph is tied to the StaticCache it was compiled with (a second cache of the same shape makes it
  fail or read the wrong memory), and generate() builds a new cache on every call. Here each model gets one
  cache per (batch, length) shape, shared by all its generators and reset between calls, and the caches'
  shapes are marked static, so a new shape compiles its own graph instead of going dynamic.
Frozen weights are constants of the compiled code: if the weights change (training, load_state_dict), the
generator notices through a checksum of the weights and compiles again.

Missing hooks (the only private names of other libraries in the package; `tests/test_compiled.py` pins what
they do: compiled tokens equal eager ones across calls, shapes and weight changes):
- `CompileConfig._compile_all_devices`: generate() has no public switch to compile its step on a CPU;
- `torch._inductor.config.patch(freezing=..., max_autotune=...)`: freezing has no public switch that reaches the
  compilation generate() starts (see above);
- `torch._dynamo.mark_static` and `torch._dynamo.config.patch(recompile_limit=...)`: torch.compiler has neither.
"""

import math
import weakref

import torch
from torch._inductor import config as inductor_config
from transformers import CompileConfig, StaticCache

from .batching import new_tokens

CACHE_BUCKET = 256  # cache lengths are rounded up to this, so prompts of any length share a few compiled shapes

# Per model, shared by all its generators: the weights' version when compiled, and one cache per shape.
_STATE: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


class CompiledGenerator:
    def __init__(self, model):
        self.model = model
        self.compile_config = CompileConfig(fullgraph=False, dynamic=None, mode=None)
        # generate() compiles only on accelerators unless told otherwise (a transformers switch for this purpose)
        self.compile_config._compile_all_devices = True
        self._state = _STATE.setdefault(model, {"version": self._version(), "caches": {}})

    @torch.no_grad()
    def _version(self) -> tuple:
        """The weights as the compiled code holds them: where each lives and the sum of its values, which any
        change (an optimizer step, load_state_dict) moves; one pass over the weights per call."""
        return tuple((p.data_ptr(), float(p.float().sum())) for p in self.model.parameters())

    def _cache_for(self, batch_size: int, length: int) -> StaticCache:
        limit = self.model.config.max_position_embeddings
        length = min(limit, math.ceil(length / CACHE_BUCKET) * CACHE_BUCKET)
        caches, key = self._state["caches"], (batch_size, length, self.model.dtype, self.model.device)
        cache = caches.get(key)
        if cache is not None:
            cache.reset()
            return cache
        config = self.model.config
        cache = caches[key] = StaticCache(config=config, max_cache_len=length)
        cache.early_initialization(batch_size, config.num_attention_heads, config.head_dim, self.model.dtype,
                                   self.model.device)
        for layer in cache.layers:  # see the module docstring: one compiled graph per cache, never shared
            for tensor in (layer.keys, layer.values):
                torch._dynamo.mark_static(tensor)
        return cache

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **kwargs):
        """`model.generate(input_ids, max_new_tokens=..., **kwargs)` with the compiled decode step."""
        if self._version() != self._state["version"]:  # the compiled code holds the old weights as constants
            torch.compiler.reset()
            self._state.update(version=self._version(), caches={})
        B, T = input_ids.shape
        num_sequences = B * kwargs.get("num_return_sequences", 1) * kwargs.get("num_beams", 1)
        new_tokens(T, max_new_tokens, self.model.config.max_position_embeddings)  # or refused
        cache = self._cache_for(num_sequences, T + max_new_tokens)
        # Each shape compiles up to three graphs (first step, then the local layers' fill count made symbolic,
        # then their window full); the limit is raised so several shapes fit before dynamo gives up.
        compiling = inductor_config.patch(freezing=True, max_autotune=True, autotune_num_choices_displayed=0)
        with compiling, torch._dynamo.config.patch(recompile_limit=64):
            return self.model.generate(input_ids, max_new_tokens=max_new_tokens, cache=cache,
                                       compile_config=self.compile_config, **kwargs)
