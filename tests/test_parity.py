"""Parity with transformers.GPTNeoForCausalLM (the oracle) on copied weights, sequences longer than the window."""

import pytest
import torch
from transformers import GPTNeoConfig, GPTNeoForCausalLM

from conftest import WINDOW, tiny_model
from tinygpt import TinyGPTForCausalLM
from tinygpt.convert import gpt_neo_to_tinygpt, tinygpt_to_gpt_neo


def random_gpt_neo(seed=0, **overrides) -> GPTNeoForCausalLM:
    kwargs = dict(vocab_size=97, max_position_embeddings=64, hidden_size=32, num_layers=4, num_heads=4,
                  attention_types=[[["global", "local"], 2]], window_size=WINDOW, tie_word_embeddings=False,
                  bos_token_id=96, eos_token_id=96, initializer_range=0.2)
    torch.manual_seed(seed)
    return GPTNeoForCausalLM(GPTNeoConfig(**{**kwargs, **overrides})).eval()


@pytest.fixture(params=["sdpa", "eager"])
def pair(request):
    neo = random_gpt_neo()
    ours = gpt_neo_to_tinygpt(neo)
    ours.set_attn_implementation(request.param)
    return neo, ours


def test_logits_and_loss_match_gpt_neo(pair):
    neo, ours = pair
    ids = torch.randint(0, 97, (3, 60))  # 60 tokens: far past the window of 8
    expected, actual = neo(ids, labels=ids), ours(ids, labels=ids)
    torch.testing.assert_close(actual.logits, expected.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(actual.loss, expected.loss, rtol=0, atol=1e-6)


def test_padded_batch_matches_gpt_neo_on_real_tokens(pair):
    neo, ours = pair
    ids = torch.randint(0, 96, (2, 40))
    mask = torch.ones_like(ids)
    mask[0, :7] = 0  # left padding
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    expected = neo(ids, attention_mask=mask, position_ids=position_ids).logits
    actual = ours(ids, attention_mask=mask).logits  # our positions come from the mask
    torch.testing.assert_close(actual[0, 7:], expected[0, 7:], rtol=0, atol=1e-5)
    torch.testing.assert_close(actual[1], expected[1], rtol=0, atol=1e-5)


def test_greedy_generation_of_64_tokens_is_identical(pair):
    neo, ours = pair
    prompt = torch.randint(0, 96, (2, 6))
    settings = dict(max_new_tokens=56, min_new_tokens=56, do_sample=False, pad_token_id=96,
                    attention_mask=torch.ones_like(prompt))
    expected, actual = neo.generate(prompt, **settings), ours.generate(prompt, **settings)
    assert actual.shape == (2, 62)  # 56 new tokens + 6: to position 62, past the window many times over
    assert torch.equal(actual, expected)


def test_greedy_generation_of_64_new_tokens_is_identical_with_tied_embeddings():
    neo = random_gpt_neo(seed=3, tie_word_embeddings=True, max_position_embeddings=128)
    ours = gpt_neo_to_tinygpt(neo)
    assert ours.config.tie_word_embeddings and ours.lm_head.weight is ours.model.embed_tokens.weight
    prompt = torch.randint(0, 96, (1, 4))
    settings = dict(max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=96)
    assert torch.equal(ours.generate(prompt, **settings), neo.generate(prompt, **settings))


def test_tinygpt_to_gpt_neo_round_trip():
    ours = tiny_model(seed=5)
    neo = tinygpt_to_gpt_neo(ours)
    assert isinstance(neo, GPTNeoForCausalLM) and neo.config.attention_layers == ours.config.attention_types
    ids = torch.randint(0, 97, (2, 50))
    torch.testing.assert_close(neo(ids).logits, ours(ids).logits, rtol=0, atol=1e-5)
    back = gpt_neo_to_tinygpt(neo)
    for (name, a), (_, b) in zip(ours.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name


def test_conversion_from_a_saved_gpt_neo_folder(tmp_path):
    """The path form of gpt_neo_to_tinygpt, as for roneneldan/TinyStories-33M saved locally."""
    neo = random_gpt_neo(seed=7, intermediate_size=48, activation_function="gelu_new")
    neo.save_pretrained(tmp_path)
    ours = gpt_neo_to_tinygpt(tmp_path)
    assert isinstance(ours, TinyGPTForCausalLM) and ours.config.intermediate_size == 48
    ids = torch.randint(0, 97, (1, 30))
    torch.testing.assert_close(ours(ids).logits, neo(ids).logits, rtol=0, atol=1e-5)


def test_conversion_rejects_what_gpt_neo_cannot_express():
    with pytest.raises(ValueError, match="scale_attention_scores=True"):
        tinygpt_to_gpt_neo(tiny_model(scale_attention_scores=True))
    with pytest.raises(TypeError, match="expected a GPTNeoForCausalLM"):
        gpt_neo_to_tinygpt(tiny_model())
