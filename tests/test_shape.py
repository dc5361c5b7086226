"""The recipe's shape for the machine (tinygpt.shape): measured candidates, the rule, clear errors."""

import pytest
from transformers import TrainingArguments

import tinygpt.shape as shape
from conftest import tiny_config


def make_config(overrides):
    """pick_shape's make_config: a tiny config with the candidate's shape."""
    return tiny_config(vocab_size=500, **overrides)


def test_a_faster_machine_gets_a_bigger_model(monkeypatch):
    """The largest candidate with at least TOKENS_PER_PARAMETER tokens per parameter in the time left."""
    args = TrainingArguments(output_dir="unused", report_to=[])
    for speed, expected in ((2_000, "32x2"), (20_000, "64x2"), (200, "32x2")):  # slow, fast, too slow for any
        monkeypatch.setattr(shape, "measure_tokens_per_s", lambda model, *a, **k: speed * 32 / model.config.hidden_size)
        overrides, decision = shape.pick_shape("32x2,64x2", make_config, args, 64, seconds_left=60)
        assert decision["chosen"] == expected and overrides["hidden_size"] == int(expected.split("x")[0])
        # measured from the largest down, until one fits
        assert [c["shape"] for c in decision["candidates"]] == (["64x2"] if expected == "64x2" else ["64x2", "32x2"])


@pytest.mark.parametrize("tokens_per_parameter, expected",
                         [(2.09, "32x2"), (2.23, "32x2"), (2.51, "32x2"), (3.46, "64x2")])
def test_the_rule_as_fitted(monkeypatch, tokens_per_parameter, expected):
    """Full-length runs the threshold is fitted to, float32 on 2 Zen 3 cores: shapes the budget let see 2.09, 2.23
    and 2.51 tokens per parameter lost to a smaller one (128 x 8), one at 3.46 won (128 x 6 over 96 x 6)."""
    args = TrainingArguments(output_dir="unused", report_to=[])
    seconds = 60 * (1 - shape.FINAL_SHARE)
    largest = shape.TinyGPTForCausalLM(make_config(shape.shape_overrides(64, 2))).num_parameters()
    monkeypatch.setattr(shape, "matmul_peak_flops", lambda dtype: float("inf"))
    monkeypatch.setattr(shape, "measure_tokens_per_s", lambda model, *a, **k: (
        tokens_per_parameter * largest / seconds if model.config.hidden_size == 64 else 1e9))
    _, decision = shape.pick_shape("32x2,64x2", make_config, args, 64, seconds_left=60)
    assert decision["candidates"][0]["tokens_per_parameter"] == tokens_per_parameter
    assert decision["chosen"] == expected


def test_a_shape_too_large_even_at_the_matmul_peak_is_not_measured(monkeypatch):
    """No step trains faster than the machine's matmul peak: where even that speed cannot give a candidate
    TOKENS_PER_PARAMETER, it is skipped unmeasured (a slow machine spends its minutes training, not measuring)."""
    args = TrainingArguments(output_dir="unused", report_to=[])
    largest = shape.TinyGPTForCausalLM(make_config(shape.shape_overrides(64, 4)))
    # a peak at which 64x4 could see 1.5 tokens per parameter in the time left (64x2: 4.3)
    peak = 1.5 * largest.num_parameters() * shape.model_flops_per_token(largest, 64) / (60 * (1 - shape.FINAL_SHARE))
    monkeypatch.setattr(shape, "matmul_peak_flops", lambda dtype: peak)
    measured = []

    def as_fast_as_the_peak_allows(model, *args, **kwargs):
        measured.append(model.config.hidden_size)
        return shape.matmul_peak_flops(None) / shape.model_flops_per_token(model, 64)

    monkeypatch.setattr(shape, "measure_tokens_per_s", as_fast_as_the_peak_allows)
    overrides, decision = shape.pick_shape("32x2,64x2,64x4", make_config, args, 64, seconds_left=60)
    assert measured == [64] and decision["chosen"] == "64x2"
    assert decision["too_large_at_peak"] == [{"shape": "64x4", "parameters": largest.num_parameters(),
                                              "tokens_per_parameter_at_peak": 1.5}]
    # the smallest is trained whatever its bound says, and measured for the record
    monkeypatch.setattr(shape, "matmul_peak_flops", lambda dtype: peak / 1000)
    measured.clear()
    assert shape.pick_shape("32x2,64x2,64x4", make_config, args, 64, seconds_left=60)[1]["chosen"] == "32x2"
    assert measured == [32] and overrides["hidden_size"] == 64


def test_measuring_a_shape_runs_real_training_steps():
    from tinygpt.training import TinyGPTTrainingArguments

    args = TinyGPTTrainingArguments(output_dir="unused", report_to=[], per_device_train_batch_size=2, use_cpu=True,
                                    muon=True)
    assert shape.measure_tokens_per_s(shape.TinyGPTForCausalLM(tiny_config()), args, 16, steps=1) > 0


def test_bad_shapes_are_named():
    assert shape.parse_shapes("128x8, 160x8") == [(128, 8), (160, 8)]
    for bad in ("128", "100x8", "axb", ""):
        with pytest.raises(ValueError, match="auto_shape"):
            shape.parse_shapes(bad)
