"""Unit tests of TinyGPTConfig: presets, parameter counts, validation, serialisation."""

import json

import pytest
import torch
from transformers import AutoConfig, DynamicCache

from tinygpt import PRESETS, TinyGPTConfig, TinyGPTForCausalLM

# Counted from the built models; the module docstring and README quote the same figures.
PRESET_PARAMETERS = {
    "tinystories-1m": 1_455_360,
    "tinystories-3m": 3_697_152,
    "tinystories-8m": 10_540_032,
    "tinystories-28m": 33_662_976,
    "tinystories-41m": 41_026_560,
    "tinystories-cpu": 3_697_152,
}


def test_presets_have_the_documented_parameter_counts():
    assert set(PRESETS) == set(PRESET_PARAMETERS)
    for name, expected in PRESET_PARAMETERS.items():
        assert TinyGPTForCausalLM(TinyGPTConfig.from_preset(name)).num_parameters() == expected, name


def test_seed_model_matches_the_seed_parameter_table():
    config = TinyGPTConfig.from_preset("tinystories-41m")
    assert (config.vocab_size, config.max_position_embeddings, config.hidden_size) == (8001, 512, 768)
    assert (config.num_hidden_layers, config.num_attention_heads, config.window_size) == (4, 16, 256)
    assert config.intermediate_size == 3072 and not config.tie_word_embeddings
    assert config.attention_types == ["global", "local", "global", "local"]
    assert config.eos_token_id == config.bos_token_id == 8000
    full_vocab = TinyGPTForCausalLM(TinyGPTConfig.from_preset("tinystories-41m", vocab_size=50257))
    assert full_vocab.num_parameters() == 105_931_776
    assert full_vocab.config.eos_token_id == 50256


def test_preset_overrides_and_unknown_preset():
    config = TinyGPTConfig.from_preset("tinystories-1m", num_hidden_layers=2, window_size=16)
    assert config.num_hidden_layers == 2 and config.attention_types == ["global", "local"]
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        TinyGPTConfig.from_preset("nope")


@pytest.mark.parametrize("kwargs, message", [
    (dict(hidden_size=100, num_attention_heads=3), r"hidden_size \(100\) must be divisible by num_attention_heads \(3\)"),
    (dict(attention_types=["global", "sparse", "global", "local"]), r"unknown attention type\(s\) \['sparse'\]"),
    (dict(window_size=0), "window_size must be a positive integer, got 0"),
    (dict(window_size=-4), "window_size must be a positive integer, got -4"),
    (dict(attention_types=["global", "local"]), "attention_types has 2 entries but num_hidden_layers is 4"),
    (dict(vocab_size=0), "vocab_size must be a positive integer, got 0"),
    (dict(activation_function="swishy"), "unknown activation_function 'swishy'"),
    (dict(resid_dropout=1.5), r"resid_dropout must be a number in \[0, 1\), got 1.5"),
    (dict(attention_dropout="0.1"), r"attention_dropout must be a number in \[0, 1\), got '0.1'"),
    (dict(layer_norm_epsilon=0), r"layer_norm_epsilon must be a number in \(0, 1\), got 0"),
    (dict(layer_norm_epsilon=float("nan")), r"layer_norm_epsilon must be a number in \(0, 1\), got nan"),
    (dict(initializer_range=-0.02), r"initializer_range must be a number in \[0, 10\], got -0.02"),
    (dict(max_position_embeddings=2.5), "max_position_embeddings must be a positive integer, got 2.5"),
    (dict(use_cache="yes"), "use_cache must be true or false, got 'yes'"),
    (dict(eos_token_id=9000), r"eos_token_id must be a token id in \[0, 8001\) \(or a list of them\), got 9000"),
    (dict(hiden_size=256), "unknown TinyGPTConfig argument\\(s\\): 'hiden_size' \\(did you mean 'hidden_size'"),
    (dict(num_layers=2, n_head=4), "unknown TinyGPTConfig argument\\(s\\): 'n_head'.*; 'num_layers' \\(did you mean "
                                   "'num_hidden_layers'"),
    (dict(sliding_window=16), "sliding_window is derived from window_size: set window_size instead"),
    (dict(layer_types=["full_attention"] * 4), "layer_types is derived from attention_types"),
])
def test_malformed_configs_raise_value_errors_that_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TinyGPTConfig(**kwargs)


def test_malformed_config_json_is_rejected_on_load(tmp_path):
    TinyGPTConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2).save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text().replace('"window_size": 256', '"window_size": 0')
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match="window_size must be a positive integer, got 0"):
        AutoConfig.from_pretrained(tmp_path)


def test_configs_written_by_transformers_load_with_their_standard_keys(tmp_path):
    """Unknown keys are refused, but not the ones transformers itself writes (architectures, auto_map, dtype,
    transformers_version, model_type) or passes on loading (name_or_path, attn_implementation, ...)."""
    from transformers import AutoModelForCausalLM

    TinyGPTForCausalLM(TinyGPTConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2)).save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert {"architectures", "auto_map", "dtype", "transformers_version", "model_type"} <= written.keys()
    assert AutoConfig.from_pretrained(tmp_path, output_attentions=True).output_attentions
    model = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager", dtype=torch.bfloat16)
    assert model.config._attn_implementation == "eager" and model.dtype == torch.bfloat16
    written["torch_dtype"] = written.pop("dtype")  # what transformers 4.x wrote
    (tmp_path / "config.json").write_text(json.dumps(written))
    assert AutoConfig.from_pretrained(tmp_path).hidden_size == 32
    written["hiden_size"] = 64
    (tmp_path / "config.json").write_text(json.dumps(written))
    with pytest.raises(ValueError, match="'hiden_size' \\(did you mean 'hidden_size'"):
        AutoConfig.from_pretrained(tmp_path)


def test_round_trip_and_cache_layer_types(tmp_path):
    config = TinyGPTConfig(num_hidden_layers=3, attention_types=["local", "local", "global"], window_size=32)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, TinyGPTConfig)
    assert loaded.to_diff_dict() == config.to_diff_dict()
    assert loaded.layer_types == ["sliding_attention", "sliding_attention", "full_attention"]
    cache = DynamicCache(config=loaded)
    assert [layer.is_sliding for layer in cache.layers] == [True, True, False]
    assert cache.layers[0].sliding_window == 32
