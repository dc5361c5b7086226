"""TinyGPT: a GPT-Neo-style decoder written from scratch as a first-class transformers model.

Reads bottom-up like the math: input checks and mask helpers -> attention -> MLP -> block -> models -> task heads.
Self-contained on purpose (it is copied to the Hub for `trust_remote_code=True`): it imports transformers
and torch, and from this package only `configuration_tinygpt`.

Shape notation, used on every reshape:
    B batch, T query length, S key length (cached + new), C hidden_size, nh heads, hs head_dim (C = nh * hs),
    V vocab_size.
"""

import functools
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import (GenericForQuestionAnswering, GenericForSequenceClassification,
                                          GenericForTokenClassification, GradientCheckpointingLayer)
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_tinygpt import TinyGPTConfig

# transformers 5.24 renamed the KV cache, as forward()'s argument and as the outputs' field, from `past_key_values`
# to `cache`. This file reads it as `cache` and accepts both names (`accepts_past_key_values`); its outputs carry it
# under the name of the installed release, where generate() looks for it. One file for 5.16.1 to the newest 5.x.
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def accepts_past_key_values(forward):
    """forward() reads the KV cache as `cache`; generate() before 5.24 (and callers written for it) pass it as
    `past_key_values`."""
    @functools.wraps(forward)
    def with_either_name(self, *args, past_key_values=None, **kwargs):
        if past_key_values is not None:
            if kwargs.get("cache") is not None:
                raise ValueError("pass the KV cache as `cache` or as `past_key_values`, not both")
            kwargs["cache"] = past_key_values
        return forward(self, *args, **kwargs)
    return with_either_name


# ----------------------------------------------------------------------------- input checks and mask helpers


def check_input_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    """An id outside the vocabulary would index past the embedding table: say which one instead."""
    if input_ids.numel() == 0:
        return
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        bad = high if high >= vocab_size else low
        raise ValueError(f"token id {bad} is outside the vocabulary (size {vocab_size})")


def position_ids_from_attention_mask(attention_mask: torch.Tensor, query_length: int) -> torch.Tensor:
    """Positions that count only real tokens, so a left-padded prompt starts at position 0.

    attention_mask: (B, S) with 1 for tokens and 0 for padding, covering cached and new tokens.
    Returns (B, T) positions of the last T = query_length tokens (padding gets position 0).
    """
    positions = attention_mask.long().cumsum(-1) - 1  # (B, S)
    positions = positions.masked_fill(attention_mask == 0, 0)
    return positions[:, -query_length:]  # (B, T)


def check_positions(position_ids: torch.Tensor, max_position_embeddings: int) -> None:
    if position_ids.numel() and int(position_ids.max()) >= max_position_embeddings:
        raise ValueError(
            f"the input reaches position {int(position_ids.max())}, but the model has only "
            f"max_position_embeddings={max_position_embeddings} positions: shorten the input to at most "
            f"{max_position_embeddings} tokens (prompt plus generated)"
        )


class PositionLimit(StoppingCriteria):
    """Ends generation at the model's last position: a story stops there (with a warning) instead of running into
    positions the model has no embedding for."""

    def __init__(self, max_position_embeddings: int):
        self.max_position_embeddings = max_position_embeddings

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        done = input_ids.shape[1] >= self.max_position_embeddings
        if done:
            warnings.warn(f"generation stopped at the model's {self.max_position_embeddings} positions "
                          "(max_position_embeddings, the context it was trained on)", stacklevel=2)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def build_attention_masks(config, inputs_embeds, attention_mask, cache, position_ids) -> dict:
    """One mask per attention type, made by transformers' mask utilities for the active backend.

    Global layers get the causal (+ padding) mask; local layers the same restricted to the window: a query
    at position i sees keys i - window_size + 1 .. i, exactly GPT-Neo's local attention.
    Masks are built per call for the actual (T, S), never as a max_positions^2 buffer; where plain causal
    attention suffices the utilities return None and SDPA runs with is_causal. Keyed by transformers' layer
    types ("full_attention", "sliding_attention"), as generate() keys the masks it builds for a static cache.
    """
    # positional: the cache's keyword is `past_key_values` before 5.24, `cache` from it
    arguments = (config, inputs_embeds, attention_mask, cache, position_ids)
    masks = {"full_attention": create_causal_mask(*arguments)}
    if "sliding_attention" in config.layer_types:
        masks["sliding_attention"] = create_sliding_window_causal_mask(*arguments)
    return masks


# ----------------------------------------------------------------------------- attention


def eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain softmax attention, kept because it is the only path that returns the weights.

    query (B, nh, T, hs), key/value (B, nh, S, hs); attention_mask is additive (B, 1, T, S) or None.
    Returns the output as (B, T, nh, hs), like the other attention interfaces, and weights (B, nh, T, S).
    """
    # Scores in float32, as GPT-Neo, so half-precision runs do not overflow before the softmax.
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling  # (B, nh, T, S)
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1).to(value.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (B, T, nh, hs)
    return output, weights


class TinyGPTAttention(nn.Module):
    """Multi-head self-attention, global (causal) or local (sliding window) by layer."""

    def __init__(self, config: TinyGPTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.layer_type = config.layer_types[layer_idx]  # "full_attention" (global) or "sliding_attention" (local)
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        # GPT-Neo does not scale scores by 1/sqrt(hs); its weights were trained that way.
        self.scaling = self.head_dim**-0.5 if config.scale_attention_scores else 1.0
        self.is_causal = True
        # One fused projection: a single (C, 3C) matmul is cheaper than three (C, C) ones. No bias, as GPT-Neo.
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=True)
        self.resid_dropout = nn.Dropout(config.resid_dropout)

    def forward(self, hidden_states, attention_mask, cache: Cache | None = None, **kwargs):
        B, T, C = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(B, T, 3, self.num_heads, self.head_dim)  # (B, T, 3, nh, hs)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hs)
        if cache is not None:
            # A local layer's cache keeps only its window (DynamicSlidingWindowLayer), a global one everything.
            key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)  # (B, nh, S, hs)

        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention)
        output, weights = attention(
            self, query, key, value, attention_mask,
            scaling=self.scaling,
            dropout=self.config.attention_dropout if self.training else 0.0,
            sliding_window=self.config.window_size if self.layer_type == "sliding_attention" else None,
            **kwargs,
        )  # output (B, T, nh, hs)
        output = self.out_proj(output.reshape(B, T, C))  # (B, T, C)
        return self.resid_dropout(output), weights


# ----------------------------------------------------------------------------- MLP and block


def activation(name: str) -> nn.Module:
    # gelu_new is GELU's tanh approximation; torch computes the same function in one fused kernel, 4x faster
    # than transformers' formula written out in elementwise ops (and its backward is fused as well).
    return nn.GELU(approximate="tanh") if name == "gelu_new" else ACT2FN[name]


class TinyGPTMLP(nn.Module):
    def __init__(self, config: TinyGPTConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.activation_function)
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.resid_dropout)

    def forward(self, hidden_states):
        return self.dropout(self.fc_out(self.act(self.fc_in(hidden_states))))


class TinyGPTBlock(GradientCheckpointingLayer):
    """Pre-LayerNorm transformer block: two residual branches."""

    def __init__(self, config: TinyGPTConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.attn = TinyGPTAttention(config, layer_idx)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mlp = TinyGPTMLP(config)

    def forward(self, hidden_states, attention_mask=None, cache: Cache | None = None, **kwargs):
        hidden_states = hidden_states + self.attn(self.attn_norm(hidden_states), attention_mask, cache, **kwargs)[0]
        return hidden_states + self.mlp(self.mlp_norm(hidden_states))


# ----------------------------------------------------------------------------- output head + loss


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` against `targets`, computed in chunks of rows, for training.

    The full (N, V) float32 logits are never held: each chunk's logits become its gradient in place
    (softmax - one-hot), which is multiplied into the gradients of the hidden states and of the head right away.
    That removes the log-softmax backward pass and the (N, V) zero-fill of the usual path, and most of its memory
    traffic (at 16 x 256 tokens and 8K tokens the logits are 131 MB). The backward pass only scales the saved
    gradients. Matrix products run in the autocast dtype where autocast is on; the softmax always in float32.

    hidden (N, C), weight (V, C), targets (N,) with `ignore_index` for positions without a target.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index: int = -100, chunk_rows: int = 1024):
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        with torch.autocast(device, enabled=False):
            weight_mm = weight.to(dtype)  # cast once, not per chunk
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.empty_like(hidden) if needs_grad else None
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_grad else None
            for start in range(0, hidden.shape[0], chunk_rows):
                h = hidden[start:start + chunk_rows].to(dtype)  # (n, C)
                t = targets[start:start + chunk_rows]  # (n,)
                keep = (t != ignore_index).unsqueeze(1).float()  # (n, 1)
                t = t.clamp(min=0).unsqueeze(1)
                logits = (h @ weight_mm.T).float()  # (n, V)
                target_logit = logits.gather(1, t)  # (n, 1)
                peak = logits.amax(-1, keepdim=True)  # (n, 1)
                exp = logits.sub_(peak).exp_()  # in place: one pass over the logits for the loss and its gradient
                sum_exp = exp.sum(-1, keepdim=True)  # (n, 1)
                total += ((peak + sum_exp.log() - target_logit) * keep).sum()
                if needs_grad:
                    grad = exp.mul_(keep / sum_exp).scatter_add_(1, t, -keep)  # softmax - one-hot; ignored rows 0
                    grad = grad.to(dtype)
                    grad_hidden[start:start + chunk_rows] = grad @ weight_mm
                    grad_weight += (grad.T @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_hidden = grad_hidden * grad_total.to(grad_hidden.dtype) if ctx.needs_input_grad[0] else None
        grad_weight = (grad_weight * grad_total).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None, None, None


def chunked_causal_lm_loss(hidden_states, head: nn.Module, labels, num_items_in_batch=None,
                           ignore_index: int = -100, chunk_rows: int = 1024):
    """transformers' causal-LM loss (labels shifted inside, -100 ignored, a sum over `num_items_in_batch` when
    Trainer gives it, else the mean) from the hidden states (B, T, C) and the output head, without full logits.

    The model's own head (a plain nn.Linear) goes through `LinearCrossEntropy`, which reads its weight. Any other
    module in its place (a LoRA adapter, a sharded or quantised layer) is called as a module on chunks of rows,
    each chunk's logits recomputed in the backward pass rather than kept, so it sees its inputs and gets its
    gradients, at the cost of one more head product per step."""
    targets = nn.functional.pad(labels, (0, 1), value=ignore_index)[:, 1:].reshape(-1).to(hidden_states.device)
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])  # (B*T, C)
    if type(head) is nn.Linear and head.bias is None:
        total = LinearCrossEntropy.apply(hidden, head.weight, targets, ignore_index, chunk_rows)
    else:
        def chunk_loss(h, t):
            return nn.functional.cross_entropy(head(h).float(), t, ignore_index=ignore_index, reduction="sum")

        total = sum(checkpoint(chunk_loss, hidden[start:start + chunk_rows], targets[start:start + chunk_rows],
                               use_reentrant=False) for start in range(0, hidden.shape[0], chunk_rows))
    if num_items_in_batch is None:
        return total / (targets != ignore_index).sum().clamp(min=1)
    return total / (num_items_in_batch.to(total.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch)


# ----------------------------------------------------------------------------- models


class TinyGPTPreTrainedModel(PreTrainedModel):
    """Weight init is transformers' default, which is GPT-Neo's: N(0, initializer_range) for linear and
    embedding weights, zero biases, unit LayerNorms."""

    config_class = TinyGPTConfig
    config: TinyGPTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TinyGPTBlock"]
    _skip_keys_device_placement = [CACHE_FIELD]
    _supports_sdpa = True
    # Attention goes through ALL_ATTENTION_FUNCTIONS with the kwargs passed down: what vLLM's Transformers modeling
    # backend checks (`is_backend_compatible`) before it runs a model with its own attention (docs/deployment.md).
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": TinyGPTBlock, "attentions": TinyGPTAttention}


class TinyGPTModel(TinyGPTPreTrainedModel):
    """Embeddings, blocks and the final LayerNorm; returns hidden states (B, T, C)."""

    def __init__(self, config: TinyGPTConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.embed_dropout = nn.Dropout(config.embed_dropout)
        self.layers = nn.ModuleList([TinyGPTBlock(config, i) for i in range(config.num_hidden_layers)])
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    @accepts_past_key_values
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | dict | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        # The checks read values (a device sync, a graph break): eager only, a compiled decode step skips them.
        checking = not torch.compiler.is_compiling()
        if inputs_embeds is None:
            if checking:
                check_input_ids(input_ids, self.config.vocab_size)
            inputs_embeds = self.embed_tokens(input_ids)  # (B, T, C)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            position_ids = self._default_position_ids(inputs_embeds, attention_mask, cache)
        if checking:
            check_positions(position_ids, self.config.max_position_embeddings)

        # generate() may hand us masks already built for a compileable cache
        masks = attention_mask if isinstance(attention_mask, dict) else build_attention_masks(
            self.config, inputs_embeds, attention_mask, cache, position_ids)
        hidden_states = self.embed_dropout(inputs_embeds + self.embed_positions(position_ids))  # (B, T, C)
        for layer in self.layers:
            hidden_states = layer(hidden_states, masks[layer.attn.layer_type], cache=cache, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), **{CACHE_FIELD: cache})

    @staticmethod
    def _default_position_ids(inputs_embeds, attention_mask, cache):
        T = inputs_embeds.shape[1]
        if isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 2:
            return position_ids_from_attention_mask(attention_mask, T)  # (B, T)
        past = cache.get_seq_length() if cache is not None else 0
        return torch.arange(past, past + T, device=inputs_embeds.device).unsqueeze(0)  # (1, T)


class TinyGPTForCausalLM(TinyGPTPreTrainedModel, GenerationMixin):
    """TinyGPTModel plus the output head (untied by default, as the seed; tied when the config says so)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: TinyGPTConfig):
        super().__init__(config)
        self.model = TinyGPTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @accepts_past_key_values
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """labels (B, T) are the input ids themselves: they are shifted inside, and -100 is ignored. Loss kwargs
        such as `num_items_in_batch` reach the loss, so gradient accumulation averages over the right count.

        Training with labels (train mode, gradients on) computes the loss from the hidden states in chunks through
        the head (`chunked_causal_lm_loss`) and returns no logits, as fused-loss kernels for transformers do: the
        full logits are most of a small model's step. Without labels (Trainer's label smoothing and
        `compute_loss_func` take the labels out and compute the loss from the logits), and in eval mode, the logits
        are returned as always."""
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache,
                             **kwargs)
        if labels is not None and self.training and torch.is_grad_enabled():
            loss = chunked_causal_lm_loss(outputs.last_hidden_state, self.lm_head, labels,
                                          kwargs.get("num_items_in_batch"))
            return CausalLMOutputWithPast(loss=loss, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
                                          **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)})
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep  # 0: all
        logits = self.lm_head(outputs.last_hidden_state[:, keep])  # (B, T', V)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                      attentions=outputs.attentions, **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)})

    def generate(self, *args, stopping_criteria=None, **kwargs):
        """`GenerationMixin.generate`, stopped at the last position the model has (see PositionLimit)."""
        criteria = StoppingCriteriaList(stopping_criteria or [])
        criteria.append(PositionLimit(self.config.max_position_embeddings))
        return super().generate(*args, stopping_criteria=criteria, **kwargs)


# ----------------------------------------------------------------------------- task heads


class TinyGPTTaskHead(TinyGPTPreTrainedModel):
    """Base of the task heads, which transformers' generic classes implement on a body built by
    AutoModel.from_config. Under trust_remote_code the config's class comes from its own copy of
    configuration_tinygpt (transformers loads each file apart), unknown to AutoModel: register the pair in use."""

    def __init__(self, config: TinyGPTConfig):
        AutoModel.register(type(config), TinyGPTModel, exist_ok=True)
        super().__init__(config)


class TinyGPTForSequenceClassification(GenericForSequenceClassification, TinyGPTTaskHead):
    """A label per text from the hidden state of its last token that is not padding (`pad_token_id`)."""


class TinyGPTForTokenClassification(GenericForTokenClassification, TinyGPTTaskHead):
    """A label per token."""


class TinyGPTForQuestionAnswering(GenericForQuestionAnswering, TinyGPTTaskHead):
    """Extractive question answering: start and end logits over the tokens."""


__all__ = ["TinyGPTPreTrainedModel", "TinyGPTModel", "TinyGPTForCausalLM", "TinyGPTForSequenceClassification",
           "TinyGPTForTokenClassification", "TinyGPTForQuestionAnswering"]
