"""TinyGPTConfig: the shape of a GPT-Neo-style decoder, plus named presets.

Self-contained on purpose: this file is copied next to the weights on the Hub and loaded with
`trust_remote_code=True`, so it may import transformers but nothing from the tinygpt package.

Presets (`TinyGPTConfig.from_preset(name, **overrides)`), all with the reduced 8,001-token vocabulary,
512 positions, alternating global/local attention (window 256) and an untied output head:

| preset            | hidden | layers | heads | intermediate | parameters |
|-------------------|-------:|-------:|------:|-------------:|-----------:|
| tinystories-1m    |     64 |      8 |    16 |          256 |  1,455,360 |
| tinystories-3m    |    128 |      8 |    16 |          512 |  3,697,152 |
| tinystories-8m    |    256 |      8 |    16 |        1,024 | 10,540,032 |
| tinystories-28m   |    512 |      8 |    16 |        2,048 | 33,662,976 |
| tinystories-41m   |    768 |      4 |    16 |        3,072 | 41,026,560 |
| tinystories-cpu   |    128 |      8 |     4 |          512 |  3,697,152 |

`tinystories-41m` is the seed model (the TinyStories-33M architecture with the 8K vocabulary); with
`vocab_size=50257` it has 105,931,776 parameters. The other rows follow the TinyStories paper's family
(roneneldan/TinyStories-1M ... -28M: same widths and depths), shrunk to the 8K vocabulary. `tinystories-cpu`
is the model preset of the 30-minute CPU recipe (`train_hf.py --preset cpu`): the 3M shape with 4 heads of 32
instead of the family's 16 of 8. The recipe replaces its width, depth and heads by the largest candidate that the
machine's measured speed lets see enough tokens (`--auto_shape`, tinygpt.shape; BENCHMARKS.md).
"""

import dataclasses
import difflib
import functools
import math

from transformers import GenerationConfig, PretrainedConfig
from transformers.activations import ACT2FN

ATTENTION_TYPES = ("global", "local")

# transformers' Cache and mask utilities speak of "full_attention" / "sliding_attention" layers.
_CACHE_LAYER_TYPE = {"global": "full_attention", "local": "sliding_attention"}

# Read-only values computed from other fields: setting them would silently disagree with their source.
_DERIVED = {"head_dim": "hidden_size and num_attention_heads", "layer_types": "attention_types",
            "sliding_window": "window_size"}

# Written into every saved config.json, so a folder (or Hub repo) saved as any one of these loads as any other
# with trust_remote_code=True: a language model fine-tuned into a classifier needs no other code.
AUTO_MAP = {"AutoConfig": "configuration_tinygpt.TinyGPTConfig", "AutoModel": "modeling_tinygpt.TinyGPTModel",
            **{f"AutoModelFor{task}": f"modeling_tinygpt.TinyGPTFor{task}"
               for task in ("CausalLM", "SequenceClassification", "TokenClassification", "QuestionAnswering")}}

_SEED = dict(vocab_size=8001, max_position_embeddings=512, num_attention_heads=16, window_size=256)
PRESETS = {
    "tinystories-1m": dict(_SEED, hidden_size=64, num_hidden_layers=8),
    "tinystories-3m": dict(_SEED, hidden_size=128, num_hidden_layers=8),
    "tinystories-8m": dict(_SEED, hidden_size=256, num_hidden_layers=8),
    "tinystories-28m": dict(_SEED, hidden_size=512, num_hidden_layers=8),
    "tinystories-41m": dict(_SEED, hidden_size=768, num_hidden_layers=4),
    # the base of `train_hf.py --preset cpu`, whose --auto_shape then picks the width and depth for the machine
    "tinystories-cpu": dict(_SEED, hidden_size=128, num_hidden_layers=8, num_attention_heads=4),
}


@functools.lru_cache(maxsize=256)
def _transformers_key(key: str) -> bool:
    """Whether transformers itself reads or writes `key` in a config, asked of the installed release rather than
    listed here (a list would refuse a key a later release adds): a field or setting of a plain PretrainedConfig
    (`num_labels`, `attn_implementation` stored as `_attn_implementation`, ...), a generation setting, one of the
    underscored keys transformers passes internally (`_commit_hash`), or the `auto_map` of remote code."""
    if key.startswith("_") or key == "auto_map" or key in {f.name for f in dataclasses.fields(PretrainedConfig)}:
        return True
    plain = PretrainedConfig()
    return any(hasattr(plain, name) and not callable(getattr(type(plain), name, None)) for name in (key, "_" + key)) \
        or hasattr(GenerationConfig(), key)


class TinyGPTConfig(PretrainedConfig):
    r"""Configuration of a TinyGPT model (GPT-Neo architecture, HF-standard names).

    Args:
        vocab_size: number of tokens; ids must lie in `[0, vocab_size)`.
        max_position_embeddings: number of learned positions, i.e. the longest input.
        hidden_size, num_hidden_layers, num_attention_heads: width, depth and heads (C, L, nh).
        intermediate_size: MLP width; `None` means `4 * hidden_size`.
        attention_types: one of `"global"` (full causal) / `"local"` (sliding window) per layer;
            `None` alternates global, local, ... as GPT-Neo does.
        window_size: a local layer sees the current token and the `window_size - 1` before it.
        activation_function: a name from `transformers.activations.ACT2FN` (GPT-Neo: `gelu_new`).
        embed_dropout, attention_dropout, resid_dropout: dropout probabilities.
        layer_norm_epsilon, initializer_range: LayerNorm epsilon and the std of the normal init.
        scale_attention_scores: divide scores by sqrt(head_dim); GPT-Neo does not, so neither do we.
        tie_word_embeddings: share the output head with the token embedding (the seed does not).
    """

    model_type = "tinygpt"
    keys_to_ignore_at_inference = ["cache"]

    def __init__(
        self,
        vocab_size: int = 8001,
        max_position_embeddings: int = 512,
        hidden_size: int = 768,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 16,
        intermediate_size: int | None = None,
        attention_types: list[str] | None = None,
        window_size: int = 256,
        activation_function: str = "gelu_new",
        embed_dropout: float = 0.0,
        attention_dropout: float = 0.0,
        resid_dropout: float = 0.0,
        layer_norm_epsilon: float = 1e-5,
        initializer_range: float = 0.02,
        scale_attention_scores: bool = False,
        use_cache: bool = True,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = 4 * hidden_size if intermediate_size is None else intermediate_size
        if attention_types is None:
            attention_types = [ATTENTION_TYPES[i % 2] for i in range(num_hidden_layers)]
        self.attention_types = list(attention_types)
        self.window_size = window_size
        self.activation_function = activation_function
        self.embed_dropout = embed_dropout
        self.attention_dropout = attention_dropout
        self.resid_dropout = resid_dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.scale_attention_scores = scale_attention_scores
        self.use_cache = use_cache
        self.bos_token_id, self.eos_token_id, self.pad_token_id = bos_token_id, eos_token_id, pad_token_id
        self.tie_word_embeddings = tie_word_embeddings
        self._reject_unknown_keys(kwargs)
        self._validate()
        kwargs["auto_map"] = {**AUTO_MAP, **kwargs.get("auto_map", {})}
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @classmethod
    def _reject_unknown_keys(cls, kwargs: dict) -> None:
        """A misspelt key (`hiden_size=256`) would otherwise be stored and ignored: refuse it, naming the
        close valid names. Keys transformers writes or passes itself are accepted."""
        for name in _DERIVED.keys() & kwargs.keys():
            raise ValueError(f"{name} is derived from {_DERIVED[name]}: set {_DERIVED[name]} instead")
        unknown = sorted(k for k in kwargs if not _transformers_key(k))
        if unknown:
            own = [name for name in cls.__init__.__code__.co_varnames[1:cls.__init__.__code__.co_argcount]]
            hints = [f"{k!r}" + (f" (did you mean {', '.join(map(repr, close))}?)"
                                 if (close := difflib.get_close_matches(k, own, n=1)) else "")
                     for k in unknown]
            raise ValueError(f"unknown TinyGPTConfig argument(s): {'; '.join(hints)}. Valid names: {', '.join(own)}")

    def _validate(self):
        """The one place where a config is checked; every error names the bad value."""
        for name in ("vocab_size", "max_position_embeddings", "hidden_size", "num_hidden_layers",
                     "num_attention_heads", "intermediate_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if len(self.attention_types) != self.num_hidden_layers:
            raise ValueError(
                f"attention_types has {len(self.attention_types)} entries but num_hidden_layers is "
                f"{self.num_hidden_layers}: give one attention type per layer"
            )
        unknown = sorted({t for t in self.attention_types if t not in ATTENTION_TYPES})
        if unknown:
            raise ValueError(f"unknown attention type(s) {unknown} in attention_types; use 'global' or 'local'")
        if not isinstance(self.window_size, int) or isinstance(self.window_size, bool) or self.window_size <= 0:
            raise ValueError(f"window_size must be a positive integer, got {self.window_size!r}")
        if self.activation_function not in ACT2FN:
            raise ValueError(f"unknown activation_function {self.activation_function!r}; see transformers ACT2FN")
        for name in ("embed_dropout", "attention_dropout", "resid_dropout"):
            if not _is_number(getattr(self, name)) or not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be a number in [0, 1), got {getattr(self, name)!r}")
        if not _is_number(self.layer_norm_epsilon) or not 0.0 < self.layer_norm_epsilon < 1.0:
            raise ValueError(f"layer_norm_epsilon must be a number in (0, 1), got {self.layer_norm_epsilon!r}")
        if not _is_number(self.initializer_range) or not 0.0 <= self.initializer_range <= 10.0:
            raise ValueError(f"initializer_range must be a number in [0, 10], got {self.initializer_range!r}")
        for name in ("scale_attention_scores", "use_cache", "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            ids = value if isinstance(value, list) else [value]
            if value is not None and not all(isinstance(i, int) and not isinstance(i, bool)
                                             and 0 <= i < self.vocab_size for i in ids):
                raise ValueError(f"{name} must be a token id in [0, {self.vocab_size}) (or a list of them), "
                                 f"got {value!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def layer_types(self) -> list[str]:
        """Per-layer types in transformers' vocabulary, so `DynamicCache(config=...)` gives local layers a
        sliding-window cache and the mask utilities pick the right mask."""
        return [_CACHE_LAYER_TYPE[t] for t in self.attention_types]

    @property
    def sliding_window(self) -> int:
        """The window as transformers' masks and caches read it (same meaning as `window_size`)."""
        return self.window_size

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TinyGPTConfig":
        """A named configuration (see the module docstring), with any field overridden.

        `<|endoftext|>` is the last id of our vocabularies (as 50256 is in GPT-Neo's), so bos/eos default
        to `vocab_size - 1`.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        kwargs = {**PRESETS[name], **overrides}
        eos = kwargs["vocab_size"] - 1
        kwargs.setdefault("bos_token_id", eos)
        kwargs.setdefault("eos_token_id", eos)
        return cls(**kwargs)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = ["TinyGPTConfig"]
