"""Weights between transformers' GPT-Neo and TinyGPT, in both directions.

    from tinygpt.convert import gpt_neo_to_tinygpt, tinygpt_to_gpt_neo
    model = gpt_neo_to_tinygpt("roneneldan/TinyStories-33M")      # a Hub id, a local folder or a model
    neo = tinygpt_to_gpt_neo(model)
    export_gpt_neo("runs/cpu", "runs/cpu-gpt-neo")                 # a folder, as `tinygpt export gpt-neo` does

The two architectures compute the same function; only names differ, and TinyGPT fuses GPT-Neo's q/k/v
projections into one `qkv_proj` (rows stacked q, k, v).
"""

import os
from pathlib import Path

import torch
from transformers import GPTNeoConfig, GPTNeoForCausalLM

from .configuration_tinygpt import TinyGPTConfig
from .modeling_tinygpt import TinyGPTForCausalLM

# TinyGPT name <- GPT-Neo name, per layer ("{i}") and for the whole model; q/k/v are handled apart.
_LAYER_NAMES = {
    "attn_norm": "ln_1",
    "attn.out_proj": "attn.attention.out_proj",
    "mlp_norm": "ln_2",
    "mlp.fc_in": "mlp.c_fc",
    "mlp.fc_out": "mlp.c_proj",
}
_MODEL_NAMES = {
    "model.embed_tokens.weight": "transformer.wte.weight",
    "model.embed_positions.weight": "transformer.wpe.weight",
    "model.norm.weight": "transformer.ln_f.weight",
    "model.norm.bias": "transformer.ln_f.bias",
    "lm_head.weight": "lm_head.weight",
}
_SHARED_FIELDS = ("vocab_size", "max_position_embeddings", "hidden_size", "window_size", "activation_function",
                  "embed_dropout", "attention_dropout", "resid_dropout", "layer_norm_epsilon",
                  "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings")


def _name_pairs(num_layers: int):
    """(tinygpt_name, gpt_neo_name) for every tensor except the fused q/k/v."""
    yield from _MODEL_NAMES.items()
    for i in range(num_layers):
        for ours, theirs in _LAYER_NAMES.items():
            for kind in ("weight", "bias"):
                yield f"model.layers.{i}.{ours}.{kind}", f"transformer.h.{i}.{theirs}.{kind}"


def gpt_neo_config_to_tinygpt(config: GPTNeoConfig) -> TinyGPTConfig:
    return TinyGPTConfig(
        **{name: getattr(config, name) for name in _SHARED_FIELDS},
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        attention_types=list(config.attention_layers),
    )


def tinygpt_config_to_gpt_neo(config: TinyGPTConfig) -> GPTNeoConfig:
    if config.scale_attention_scores:
        raise ValueError("GPT-Neo cannot scale attention scores by 1/sqrt(head_dim): this model has "
                         "scale_attention_scores=True, so it has no GPT-Neo equivalent")
    return GPTNeoConfig(
        **{name: getattr(config, name) for name in _SHARED_FIELDS},
        num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        attention_types=[[[t], 1] for t in config.attention_types],
    )


@torch.no_grad()
def gpt_neo_to_tinygpt(model_or_path, **from_pretrained_kwargs) -> TinyGPTForCausalLM:
    """A TinyGPTForCausalLM with the weights of a GPT-Neo model, local folder or Hub id."""
    neo = model_or_path
    if isinstance(model_or_path, (str, os.PathLike)):
        neo = GPTNeoForCausalLM.from_pretrained(model_or_path, **from_pretrained_kwargs)
    if not isinstance(neo, GPTNeoForCausalLM):
        raise TypeError(f"expected a GPTNeoForCausalLM or a path to one, got {type(neo).__name__}")
    config = gpt_neo_config_to_tinygpt(neo.config)
    theirs = neo.state_dict()
    ours = {mine: theirs[other] for mine, other in _name_pairs(config.num_hidden_layers)}
    for i in range(config.num_hidden_layers):
        prefix = f"transformer.h.{i}.attn.attention."
        ours[f"model.layers.{i}.attn.qkv_proj.weight"] = torch.cat(
            [theirs[prefix + f"{p}_proj.weight"] for p in "qkv"], dim=0)  # (3C, C)
    model = TinyGPTForCausalLM(config).to(neo.dtype)
    model.load_state_dict(ours, strict=True)
    return model.eval()


@torch.no_grad()
def tinygpt_to_gpt_neo(model: TinyGPTForCausalLM) -> GPTNeoForCausalLM:
    """A transformers GPTNeoForCausalLM with the weights of a TinyGPT model."""
    config = tinygpt_config_to_gpt_neo(model.config)
    ours = model.state_dict()
    theirs = {other: ours[mine] for mine, other in _name_pairs(config.num_layers)}
    for i in range(config.num_layers):
        q, k, v = ours[f"model.layers.{i}.attn.qkv_proj.weight"].chunk(3, dim=0)  # 3 x (C, C)
        prefix = f"transformer.h.{i}.attn.attention."
        theirs.update({prefix + "q_proj.weight": q, prefix + "k_proj.weight": k, prefix + "v_proj.weight": v})
    neo = GPTNeoForCausalLM(config).to(model.dtype)
    # strict=False only because GPT-Neo keeps its causal masks as non-persistent buffers; check the rest.
    missing, unexpected = neo.load_state_dict(theirs, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"GPT-Neo weights did not line up: missing {missing}, unexpected {unexpected}")
    return neo.eval()


def export_gpt_neo(model_dir, out_dir) -> Path:
    """A saved TinyGPT folder (with its tokenizer) as a native GPT-Neo folder (weights, generation config,
    tokenizer), for tools that load only transformers' own architectures."""
    from transformers import GenerationConfig

    from .tokenizer import load_for_model

    model = TinyGPTForCausalLM.from_pretrained(model_dir)
    neo = tinygpt_to_gpt_neo(model)
    neo.generation_config = GenerationConfig.from_model_config(neo.config)
    neo.generation_config.update(**model.generation_config.to_diff_dict())
    neo.save_pretrained(out_dir)
    load_for_model(model_dir, neo.config.max_position_embeddings).save_pretrained(out_dir)
    return Path(out_dir)


@torch.no_grad()
def shrink_vocab(model, pruned_tokenizer, verbose: bool = True) -> TinyGPTForCausalLM:
    """Keep only the embedding and output rows of the tokens a pruned tokenizer kept.

    `model` is a TinyGPT or GPT-Neo model (or a path to a GPT-Neo one) over GPT-Neo's vocabulary;
    `pruned_tokenizer` is a tokenizer made by `prune_tokenizer` (or its saved folder), whose id map says
    which GPT-Neo id each new id stands for. Logits over the kept tokens are unchanged.
    """
    from .parameters import format_parameter_table, parameter_table
    from .tokenizer import gpt_neo_ids

    if not isinstance(model, TinyGPTForCausalLM):
        model = gpt_neo_to_tinygpt(model)
    old_ids = gpt_neo_ids(pruned_tokenizer)
    if max(old_ids) >= model.config.vocab_size:
        raise ValueError(f"the tokenizer refers to GPT-Neo id {max(old_ids)}, outside this model's vocabulary "
                         f"(size {model.config.vocab_size})")
    index = torch.tensor(old_ids)
    eos_id = old_ids.index(model.config.eos_token_id) if model.config.eos_token_id in old_ids else len(old_ids) - 1
    config = TinyGPTConfig(**{**model.config.to_diff_dict(), "vocab_size": len(old_ids), "bos_token_id": eos_id,
                              "eos_token_id": eos_id, "pad_token_id": None})
    shrunk = TinyGPTForCausalLM(config).to(model.dtype)
    state = {name: tensor for name, tensor in model.state_dict().items()}
    state["model.embed_tokens.weight"] = state["model.embed_tokens.weight"][index]  # (V', C)
    state["lm_head.weight"] = state["lm_head.weight"][index]  # (V', C); the same rows again when tied
    shrunk.load_state_dict(state, strict=True)
    if verbose:
        print(f"before ({model.config.vocab_size:,} tokens):\n{format_parameter_table(parameter_table(model))}\n")
        print(f"after ({len(old_ids):,} tokens):\n{format_parameter_table(parameter_table(shrunk))}")
    return shrunk.eval()
