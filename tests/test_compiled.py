"""The optional compiled decode step (tinygpt.compiled): same tokens as model.generate(), and it notices
changed weights. Compiling takes tens of seconds, so one tiny model serves the whole check."""

import pytest
import torch

from conftest import tiny_model
from tinygpt.compiled import CompiledGenerator

pytestmark = pytest.mark.slow  # compiling takes tens of seconds


def generate_both(model, generator, ids, **kwargs):
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=20, pad_token_id=0, **kwargs)
    torch.manual_seed(3)
    expected = model.generate(ids, **kwargs)
    torch.manual_seed(3)
    return generator.generate(ids, **kwargs), expected


def test_compiled_generation_matches_eager_across_calls_shapes_and_weight_changes():
    model = tiny_model()
    generator = CompiledGenerator(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0))
    # 20 new tokens run past the window of 8: the local layers' cache wraps around
    for prompt in (ids, ids[:, :3]):  # a second call reuses the compiled step with a reset cache
        got, expected = generate_both(model, generator, prompt, do_sample=False)
        assert torch.equal(got, expected)
    got, expected = generate_both(model, generator, ids[:1], do_sample=True)  # another batch size, sampling
    assert torch.equal(got, expected)
    # a third batch size, then a second generator of the same model: each must get the cache its graph uses
    wider = torch.randint(0, model.config.vocab_size, (3, 4), generator=torch.Generator().manual_seed(1))
    got, expected = generate_both(model, generator, wider, do_sample=False)
    assert torch.equal(got, expected)
    got, expected = generate_both(model, CompiledGenerator(model), ids, do_sample=False)
    assert torch.equal(got, expected)

    with torch.no_grad():  # frozen weights are constants of the compiled code: a change must recompile
        for parameter in model.parameters():
            parameter.mul_(1.5)
    got, expected = generate_both(model, generator, ids, do_sample=False)
    assert torch.equal(got, expected)


def test_compiled_generation_rejects_too_long_requests():
    model = tiny_model()
    ids = torch.zeros(1, 10, dtype=torch.long)
    with pytest.raises(ValueError, match="past the model's 64 positions"):
        CompiledGenerator(model).generate(ids, max_new_tokens=60)
