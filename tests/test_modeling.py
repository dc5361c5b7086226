"""Unit tests of the model: shapes, masks, the loss contract, bad input, checkpointing, embeddings."""

import pytest
import torch
import torch.nn.functional as F

from conftest import WINDOW, tiny_model
from tinygpt.modeling_tinygpt import position_ids_from_attention_mask


def test_shapes_hidden_states_and_attentions(model):
    ids = torch.randint(0, 97, (2, 20))
    out = model(ids, output_hidden_states=True)
    assert out.logits.shape == (2, 20, 97)
    assert len(out.hidden_states) == 5 and out.hidden_states[0].shape == (2, 20, 32)
    model.set_attn_implementation("eager")
    out = model(ids, output_attentions=True)
    assert len(out.attentions) == 4 and out.attentions[0].shape == (2, 4, 20, 20)


def test_global_layers_are_causal_and_local_layers_see_only_their_window(model):
    model.set_attn_implementation("eager")
    attentions = model(torch.randint(0, 97, (1, 30)), output_attentions=True).attentions
    seen_global = attentions[0][0, 0] > 0  # (T, S)
    seen_local = attentions[1][0, 0] > 0
    q, k = torch.meshgrid(torch.arange(30), torch.arange(30), indexing="ij")
    assert torch.equal(seen_global, k <= q)
    assert torch.equal(seen_local, (k <= q) & (k > q - WINDOW))  # current token + WINDOW - 1 before it


def test_local_only_model_ignores_tokens_outside_the_window():
    model = tiny_model(num_hidden_layers=1, attention_types=["local"])
    ids = torch.randint(0, 97, (1, 30))
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % 97
    a, b = model(ids).logits, model(changed).logits
    assert torch.equal(a[0, WINDOW:], b[0, WINDOW:])  # position 8 sees 1..8: token 0 is out of reach
    assert not torch.allclose(a[0, WINDOW - 1], b[0, WINDOW - 1])


def test_sdpa_and_eager_agree(model):
    ids = torch.randint(0, 97, (2, 40))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    sdpa = model(ids, attention_mask=mask).logits
    model.set_attn_implementation("eager")
    eager = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(sdpa[0], eager[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(sdpa[1, 5:], eager[1, 5:], rtol=0, atol=1e-5)


def test_loss_shifts_labels_and_ignores_minus_100(model):
    ids = torch.randint(0, 97, (2, 16))
    labels = ids.clone()
    labels[0, 10:] = -100
    out = model(ids, labels=labels)
    manual = F.cross_entropy(out.logits[:, :-1].reshape(-1, 97), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, manual)


def test_num_items_in_batch_makes_gradient_accumulation_exact(model):
    """Two micro-batches with uneven label counts, each scaled by the whole batch's count, give the
    full batch's loss: what Trainer relies on for exact gradient accumulation."""
    ids = torch.randint(0, 97, (4, 16))
    labels = ids.clone()
    labels[0, 3:] = -100
    labels[3, 12:] = -100
    full = model(ids, labels=labels).loss
    n_items = int((labels[:, 1:] != -100).sum())
    parts = [model(ids[s], labels=labels[s], num_items_in_batch=n_items).loss for s in (slice(0, 2), slice(2, 4))]
    torch.testing.assert_close(parts[0] + parts[1], full)


def test_logits_to_keep(model):
    ids = torch.randint(0, 97, (2, 12))
    full = model(ids).logits
    torch.testing.assert_close(model(ids, logits_to_keep=1).logits, full[:, -1:])
    torch.testing.assert_close(model(ids, logits_to_keep=3).logits, full[:, -3:])


def test_position_ids_from_attention_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_attention_mask(mask, 5).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert position_ids_from_attention_mask(mask, 2).tolist() == [[1, 2], [3, 4]]


def test_left_padding_does_not_change_the_real_tokens(model):
    ids = torch.randint(0, 96, (1, 12))
    padded = torch.cat([torch.full((1, 4), 96), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 12, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, 4:], model(ids).logits,
                               rtol=0, atol=1e-5)


def test_bad_token_ids_raise_a_clear_error(model):
    with pytest.raises(ValueError, match=r"token id 97 is outside the vocabulary \(size 97\)"):
        model(torch.tensor([[1, 2, 97]]))
    with pytest.raises(ValueError, match=r"token id -1 is outside the vocabulary"):
        model(torch.tensor([[1, -1, 2]]))


def test_too_long_input_raises_a_clear_error(model):
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        model(torch.randint(0, 97, (1, 65)))
    model(torch.randint(0, 97, (1, 64)))  # exactly the limit is fine


def test_generation_stops_at_the_last_position_and_says_so(model):
    prompt = torch.randint(0, 96, (2, 60))
    with pytest.warns(UserWarning, match="generation stopped at the model's 64 positions"):
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, do_sample=False)
    assert out.shape == (2, 64)
    full = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False)
    torch.testing.assert_close(out, full)  # the same tokens as a request that fits


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(resid_dropout=0.0).train()
        if checkpointing:
            model.gradient_checkpointing_enable()  # the name every 5.x has
        ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))
        model(ids, labels=ids).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_untied_by_default_and_tied_on_request():
    untied = tiny_model()
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()
    tied = tiny_model(tie_word_embeddings=True)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert tied.num_parameters() == untied.num_parameters() - 97 * 32


def test_resize_token_embeddings(model):
    ids = torch.randint(0, 97, (1, 10))
    before = model(ids).logits
    model.resize_token_embeddings(120)
    assert model.config.vocab_size == 120
    assert model.model.embed_tokens.weight.shape == (120, 32) and model.lm_head.weight.shape == (120, 32)
    after = model(ids).logits
    torch.testing.assert_close(after[..., :97], before)
    model(torch.tensor([[119]]))  # new ids are accepted


def test_weight_init_follows_gpt_neo():
    model = tiny_model(initializer_range=0.02, hidden_size=64, intermediate_size=256)
    block = model.model.layers[0]
    assert abs(block.mlp.fc_in.weight.std().item() - 0.02) < 0.002
    assert torch.all(block.mlp.fc_in.bias == 0) and torch.all(block.attn.out_proj.bias == 0)
    assert torch.all(block.attn_norm.weight == 1) and torch.all(block.attn_norm.bias == 0)


def test_bfloat16_autocast_training_tracks_float32():
    """The same 40 AdamW steps from the same weights on the same batches, in float32 and under bfloat16
    autocast: the bf16 loss curve stays within a few percent of the fp32 one while both fall by more than half
    (the loss is computed in float32 either way, so rounding does not compound into the optimizer)."""
    curves = {}
    for precision in ("fp32", "bf16"):
        model = tiny_model(seed=0).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        ids = torch.randint(0, 97, (8, 48), generator=torch.Generator().manual_seed(1))
        curve = []
        for _ in range(40):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(ids, labels=ids).loss
            assert loss.dtype == torch.float32
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            curve.append(loss.item())
        curves[precision] = torch.tensor(curve)
    fp32, bf16 = curves["fp32"], curves["bf16"]
    assert fp32[-1] < 0.5 * fp32[0]
    assert ((bf16 - fp32).abs() / fp32).max() < 0.05, (fp32, bf16)


@pytest.mark.parametrize("num_items_in_batch", [None, 50])
def test_training_loss_in_chunks_equals_the_logits_path_with_its_gradients(num_items_in_batch):
    """In training the loss comes from the hidden states in chunks, without logits: same loss and gradients as
    the eval-mode path through the full logits (float32), with ignored labels and Trainer's item count."""
    ids = torch.randint(0, 97, (3, 40))
    labels = ids.clone()
    labels[0, 5:] = -100
    kwargs = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
    grads = []
    for mode in ("eval", "train"):
        model = tiny_model()  # no dropout: the two modes compute the same function
        getattr(model, mode)()
        out = model(ids, labels=labels, **kwargs)
        out.loss.backward()
        assert (out.logits is None) == (mode == "train")
        grads.append((out.loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss, expected), (chunked_loss, actual) = grads
    torch.testing.assert_close(chunked_loss, loss, rtol=1e-5, atol=1e-6)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_chunked_loss_does_not_depend_on_the_chunk_size():
    from tinygpt.modeling_tinygpt import LinearCrossEntropy

    hidden, weight = torch.randn(50, 16, requires_grad=True), torch.randn(30, 16, requires_grad=True)
    targets = torch.randint(0, 30, (50,))
    targets[7] = -100
    results = []
    for chunk in (7, 50, 64):
        hidden.grad = weight.grad = None
        total = LinearCrossEntropy.apply(hidden, weight, targets, -100, chunk)
        (2 * total).backward()  # the backward pass scales the saved gradients
        results.append((total.detach(), hidden.grad.clone(), weight.grad.clone()))
    expected = F.cross_entropy(hidden @ weight.T, targets, ignore_index=-100, reduction="sum")
    for total, grad_hidden, grad_weight in results:
        torch.testing.assert_close(total, expected.detach())
        torch.testing.assert_close(grad_hidden, results[0][1])
        torch.testing.assert_close(grad_weight, results[0][2])
    hidden.grad = weight.grad = None
    (2 * expected).backward()
    torch.testing.assert_close(results[0][1], hidden.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][2], weight.grad, rtol=1e-5, atol=1e-6)
