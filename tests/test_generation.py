"""Generation: the KV cache (sliding-window layers for local attention), padding, decoding strategies."""

import pytest
import torch
from transformers import DynamicCache, TextStreamer

from conftest import WINDOW, gpt2_tokenizer, tiny_model
from tinygpt.modeling_tinygpt import CACHE_FIELD


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cached_logits_equal_uncached_at_every_step_past_the_window(attn):
    model = tiny_model()
    model.set_attn_implementation(attn)
    ids = torch.randint(0, 97, (2, 5))
    cache = DynamicCache(config=model.config)
    step_input = ids
    for step in range(40):  # 5 + 40 tokens: the window of 8 is passed five times over
        cached = model(step_input, cache=cache, use_cache=True).logits[:, -1]
        uncached = model(ids).logits[:, -1]
        torch.testing.assert_close(cached, uncached, rtol=0, atol=1e-5, msg=f"step {step}")
        step_input = cached.argmax(-1, keepdim=True)
        ids = torch.cat([ids, step_input], dim=1)
    # local layers hold only their window (the last window - 1 keys; the new token makes the window),
    # global layers the whole sequence
    assert cache.layers[1].keys.shape[-2] == WINDOW - 1
    assert cache.layers[0].keys.shape[-2] == ids.shape[1] - 1


def test_chunked_prefill_with_a_cache_equals_one_pass():
    model = tiny_model()
    ids = torch.randint(0, 97, (1, 30))
    cache = DynamicCache(config=model.config)
    chunks = [model(ids[:, s:s + 10], cache=cache, use_cache=True).logits for s in (0, 10, 20)]
    torch.testing.assert_close(torch.cat(chunks, dim=1), model(ids).logits, rtol=0, atol=1e-5)


def test_the_pre_5_24_past_key_values_name_still_reaches_the_cache():
    """generate() before transformers 5.24, and callers written for it, pass `past_key_values=`: it reaches the
    cache, and the outputs carry the cache under the installed release's name."""
    model = tiny_model()
    ids = torch.randint(0, 97, (1, 12))
    cache = DynamicCache(config=model.config)
    first = model(ids[:, :8], past_key_values=cache, use_cache=True)
    assert getattr(first, CACHE_FIELD) is cache and cache.get_seq_length() == 8
    rest = model(ids[:, 8:], past_key_values=cache, use_cache=True).logits
    torch.testing.assert_close(rest, model(ids).logits[:, 8:], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        model(ids, cache=cache, past_key_values=cache)


def test_generate_uses_a_sliding_window_cache():
    model = tiny_model()
    out = model.generate(torch.randint(0, 96, (1, 4)), max_new_tokens=30, min_new_tokens=30, do_sample=False,
                         pad_token_id=96, return_dict_in_generate=True)
    cache = getattr(out, CACHE_FIELD)
    assert [layer.is_sliding for layer in cache.layers] == [False, True, False, True]
    assert cache.layers[1].keys.shape[-2] == WINDOW - 1
    assert cache.layers[0].keys.shape[-2] == 33


def test_left_padded_batch_generates_like_each_prompt_alone():
    model = tiny_model()
    prompts = [torch.randint(0, 96, (n,)) for n in (3, 9, 6)]
    width = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat([torch.full((width - len(p),), 96), p]) for p in prompts])
    mask = torch.stack([torch.cat([torch.zeros(width - len(p)), torch.ones(len(p))]) for p in prompts]).long()
    settings = dict(max_new_tokens=24, min_new_tokens=24, do_sample=False, pad_token_id=96)
    batch = model.generate(ids, attention_mask=mask, **settings)
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], **settings)
        assert torch.equal(batch[row, width:], alone[0, len(prompt):]), f"prompt {row}"


def test_sampling_is_reproducible_with_a_seed_and_beam_search_runs(model):
    prompt = torch.randint(0, 96, (1, 5))
    samples = []
    for _ in range(2):
        torch.manual_seed(123)
        samples.append(model.generate(prompt, do_sample=True, top_k=20, top_p=0.9, temperature=0.8,
                                      max_new_tokens=20, pad_token_id=96))
    assert torch.equal(samples[0], samples[1])
    beams = model.generate(prompt, num_beams=3, num_return_sequences=3, max_new_tokens=15, min_new_tokens=15,
                           do_sample=False, pad_token_id=96)
    assert beams.shape == (3, 20)
    greedy = model.generate(prompt, max_new_tokens=15, min_new_tokens=15, do_sample=False, pad_token_id=96)
    scores = [model(b[None], labels=b[None]).loss for b in (beams[0], greedy[0])]
    assert scores[0] <= scores[1] + 1e-4  # the best beam is at least as likely as the greedy path


def test_text_streamer_prints_the_generated_text(capsys):
    tokenizer = gpt2_tokenizer()
    model = tiny_model(vocab_size=len(tokenizer), bos_token_id=50256, eos_token_id=50256)
    inputs = tokenizer("Once upon a time", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                         streamer=TextStreamer(tokenizer, skip_prompt=True), pad_token_id=50256)
    printed = capsys.readouterr().out
    expected = tokenizer.decode(out[0, inputs.input_ids.shape[1]:])
    assert printed.strip() == expected.strip() and expected.strip()


@pytest.mark.skipif(CACHE_FIELD != "cache", reason="transformers' continuous batching hands the model its paged "
                    "cache as TinyGPT reads it from 5.24 on (cache.update(..., kwargs=...)); before, its attention "
                    "functions update the cache themselves")
def test_continuous_batching_gives_each_prompt_its_own_greedy_story(model):
    """transformers' paged-attention scheduler (`generate_batch`): prompts of different lengths, shorter and
    longer than the local layers' window, each get what `generate()` gives them alone; sampling runs too."""
    from transformers import GenerationConfig

    prompts = [[5, 6, 7], list(range(10, 30)), [3] * 12, list(range(40, 45))]  # window 8: 20 + 12 crosses it
    greedy = GenerationConfig(max_new_tokens=12, do_sample=False, eos_token_id=96, pad_token_id=0)
    results = model.generate_batch(inputs=prompts, generation_config=greedy)
    assert len(results) == len(prompts)
    for result in results.values():
        alone = model.generate(torch.tensor([result.prompt_ids]), generation_config=greedy)[0, len(result.prompt_ids):]
        assert result.error is None and result.generated_tokens == alone.tolist()[:len(result.generated_tokens)]
        assert len(result.generated_tokens) == len(alone)
    torch.manual_seed(0)
    sampled = model.generate_batch(inputs=prompts, generation_config=GenerationConfig(
        max_new_tokens=6, do_sample=True, temperature=0.8, top_k=20, eos_token_id=96, pad_token_id=0))
    assert all(r.error is None and 0 < len(r.generated_tokens) <= 6 for r in sampled.values())
