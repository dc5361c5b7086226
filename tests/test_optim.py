"""The optimizers (tinygpt.optim): the package's Muon against torch.optim.Muon, and MuonWithAdamW's state."""

import io
import platform
import subprocess
import sys

import pytest
import torch

from conftest import tiny_model
from tinygpt.optim import Muon, MuonWithAdamW, build_muon_with_adamw, muon_parameter_names


def _pairs(shapes, seed=0):
    torch.manual_seed(seed)
    ours = [torch.nn.Parameter(torch.randn(*shape)) for shape in shapes]
    return ours, [torch.nn.Parameter(p.detach().clone()) for p in ours]


@pytest.mark.parametrize("adjust_lr_fn", ["original", "match_rms_adamw"])
def test_muon_in_bfloat16_is_torch_muon(adjust_lr_fn):
    """Same shapes batched together, different shapes apart: in bfloat16 (torch's precision) the steps equal
    torch.optim.Muon's exactly, and so does the state it keeps."""
    ours, theirs = _pairs([(24, 16), (24, 16), (16, 40), (12, 12)])
    mine = Muon(ours, lr=0.02, weight_decay=0.1, adjust_lr_fn=adjust_lr_fn, ns_dtype=torch.bfloat16)
    reference = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1, adjust_lr_fn=adjust_lr_fn)
    for step in range(3):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        mine.step()
        reference.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    for a, b in zip(mine.state_dict()["state"].values(), reference.state_dict()["state"].values()):
        torch.testing.assert_close(a["momentum_buffer"], b["momentum_buffer"], rtol=0, atol=0)


def test_muon_in_float32_orthogonalises_more_precisely_than_in_bfloat16():
    """float32 (for CPUs without bfloat16 units) is the same iteration: the update is close to torch's, and its
    singular values lie in Muon's band around 1."""
    ours, theirs = _pairs([(32, 16)])
    mine = Muon(ours, lr=0.01, weight_decay=0.0, ns_dtype=torch.float32)
    reference = torch.optim.Muon(theirs, lr=0.01, weight_decay=0.0)
    ours[0].grad = torch.randn(32, 16)
    theirs[0].grad = ours[0].grad.clone()
    before = ours[0].detach().clone()
    mine.step()
    reference.step()
    update = (before - ours[0].detach()) / (0.01 * (32 / 16) ** 0.5)
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=0.01 * 0.05)
    singular = torch.linalg.svdvals(update)
    assert singular.min() > 0.5 and singular.max() < 1.5


def test_muon_rejects_what_it_cannot_optimise():
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="adjust_lr_fn"):
        Muon([torch.nn.Parameter(torch.zeros(3, 3))], adjust_lr_fn="nonsense")


def test_muon_with_adamw_state_round_trip():
    """A resumed optimizer continues exactly: the state dict holds both optimizers."""
    class Args:
        learning_rate, weight_decay, adam_beta1, adam_beta2, adam_epsilon = 1e-3, 0.1, 0.9, 0.95, 1e-8
        muon_momentum = 0.9

    def one_step(model, optimizer, seed):
        torch.manual_seed(seed)
        ids = torch.randint(0, 97, (2, 12))
        model.train()
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    model = tiny_model()
    optimizer = build_muon_with_adamw(model, Args, {n for n, p in model.named_parameters() if p.ndim == 2})
    assert isinstance(optimizer, MuonWithAdamW) and muon_parameter_names(model)
    assert {group["momentum"] for group in optimizer.muon.param_groups} == {Args.muon_momentum}
    assert {group["betas"] for group in optimizer.adamw.param_groups} == {(Args.adam_beta1, Args.adam_beta2)}
    one_step(model, optimizer, 1)
    copy = tiny_model()
    copy.load_state_dict(model.state_dict())
    resumed = build_muon_with_adamw(copy, Args, {n for n, p in copy.named_parameters() if p.ndim == 2})
    saved = io.BytesIO()  # through a file, as a checkpoint does (a state dict holds references to live tensors)
    torch.save(optimizer.state_dict(), saved)
    saved.seek(0)
    resumed.load_state_dict(torch.load(saved))
    one_step(model, optimizer, 2)
    one_step(copy, resumed, 2)
    for (name, p), q in zip(model.named_parameters(), copy.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_a_scheduler_drives_both_optimizers_after_a_state_load():
    """Loading a state (accelerate does it once when Trainer prepares the optimizer, and every resume does) gives
    the inner optimizers new param groups: a learning-rate scheduler on MuonWithAdamW must still set the rate that
    Muon and AdamW apply. Factor 0 -> no parameter moves."""
    from torch.optim.lr_scheduler import LambdaLR

    weight, bias = torch.nn.Parameter(torch.randn(8, 8)), torch.nn.Parameter(torch.randn(8))
    optimizer = MuonWithAdamW([weight], [{"params": [bias], "weight_decay": 0.1, "lr": 1e-2}], lr=1e-2,
                              weight_decay=0.1)
    optimizer.load_state_dict(optimizer.state_dict())
    LambdaLR(optimizer, lambda step: 0.0)
    before = [weight.detach().clone(), bias.detach().clone()]
    weight.grad, bias.grad = torch.randn(8, 8), torch.randn(8)
    optimizer.step()
    assert optimizer.muon.param_groups[0]["lr"] == optimizer.adamw.param_groups[0]["lr"] == 0.0
    torch.testing.assert_close([weight.detach(), bias.detach()], before, rtol=0, atol=0)


def test_trainers_learning_rate_schedule_reaches_muon_and_adamw(tmp_path):
    """Through Trainer (which hands the optimizer to accelerate): a warm-up starts at factor 0, so the first step
    of a --muon run must leave every weight where it was."""
    from datasets import Dataset

    from tinygpt.data import CausalLMCollator
    from tinygpt.training import TinyGPTTrainer, TinyGPTTrainingArguments

    model = tiny_model().train()
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    blocks = Dataset.from_dict({"input_ids": torch.randint(0, 96, (8, 16)).tolist()})
    args = TinyGPTTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=1e-2,
                                    max_steps=1, lr_scheduler_type="constant_with_warmup", warmup_steps=100,
                                    muon=True, eval_strategy="no", save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = TinyGPTTrainer(model=model, args=args, train_dataset=blocks, block_size=16,
                             data_collator=CausalLMCollator(96))
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer, MuonWithAdamW)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), initial[name], rtol=0, atol=0, msg=name)


def test_muon_allocates_its_momentum_buffers_once(monkeypatch):
    """The buffers are made at the first step; later steps allocate no zero tensor per parameter."""
    params = [torch.nn.Parameter(torch.randn(8, 8)) for _ in range(3)]
    muon = Muon(params, lr=0.02)
    for p in params:
        p.grad = torch.randn_like(p)
    muon.step()
    buffers = [muon.state[p]["momentum_buffer"] for p in params]
    made = []
    real = torch.zeros_like
    monkeypatch.setattr(torch, "zeros_like", lambda *a, **k: made.append(1) or real(*a, **k))
    muon.step()
    assert not made and all(muon.state[p]["momentum_buffer"] is b for p, b in zip(params, buffers))


def test_bf16_if_fast_compiles_only_a_bf16_cpu_run_with_a_compiler(monkeypatch, tmp_path):
    """Compiling speeds up the bf16 step and not the float32 one (BENCHMARKS.md, "The training step"); inductor
    needs a C++ compiler, so without one the run trains uncompiled instead of failing."""
    from types import SimpleNamespace

    import tinygpt.training as training
    from tinygpt.optim import compile_pays

    monkeypatch.setenv("CXX", sys.executable)  # any program on the path stands for inductor's compiler here
    for fast, expected in ((True, True), (False, False)):
        monkeypatch.setattr(training, "fast_bfloat16", lambda fast=fast: fast)
        args = training.TinyGPTTrainingArguments(output_dir=str(tmp_path), bf16_if_fast=True, use_cpu=True,
                                                 report_to=[])
        assert (args.bf16, args.torch_compile) == (fast, expected)
    bf16_cpu = SimpleNamespace(bf16=True, use_cpu=True)
    monkeypatch.setenv("CXX", "no-such-compiler")
    assert not compile_pays(bf16_cpu)
    monkeypatch.setenv("CXX", sys.executable)
    assert compile_pays(bf16_cpu) and not compile_pays(SimpleNamespace(bf16=True, use_cpu=False))


def test_fast_bfloat16_measures_the_units_on_one_thread_for_a_while(monkeypatch):
    """The precision of a --bf16_if_fast run (3x its speed on a CPU with bf16 units) is decided by timing small
    products: on one thread, where another busy process cannot make the threads of a product wait for each other
    (that flipped 5 of 8 decisions, docs/benchmarks-history.md), each dtype for 50 ms, and torch's threads are
    given back."""
    import tinygpt.optim as optim

    threads = torch.get_num_threads()
    seen = []

    def timed(dtype, repeats, size, min_seconds):
        seen.append((dtype, torch.get_num_threads(), min_seconds))
        return {torch.bfloat16: 4.0e11, torch.float32: 1.1e11}[dtype]

    monkeypatch.setattr(optim, "matmul_peak_flops", timed)
    optim.fast_bfloat16.cache_clear()
    try:
        assert optim.fast_bfloat16() is True
    finally:
        optim.fast_bfloat16.cache_clear()
    assert [(dtype, n) for dtype, n, _ in seen] == [(torch.bfloat16, 1), (torch.float32, 1)]
    assert all(min_seconds >= 0.05 for *_, min_seconds in seen) and torch.get_num_threads() == threads


def test_a_matmul_timing_outlasts_a_stall():
    """matmul_peak_flops with min_seconds keeps timing products until that much time has passed, so a stall
    that slows the first few (here 35 ms in all, 5 ms a product against 0.1 ms) does not become the measurement."""
    from tinygpt.throughput import matmul_peak_flops

    def stalled_clock():
        calls, now = 0, 0.0

        def clock():  # each reading 5 ms after the one before for the first seven (three timings), then 0.1 ms
            nonlocal calls, now
            calls += 1
            now += 0.005 if calls <= 7 else 0.0001
            return now
        return clock

    best_of_three = matmul_peak_flops(torch.float32, 3, 8, 0.0, stalled_clock())
    for_50_ms = matmul_peak_flops(torch.float32, 3, 8, 0.05, stalled_clock())
    assert best_of_three == pytest.approx(2 * 8**3 / 0.005) and for_50_ms == pytest.approx(2 * 8**3 / 0.0001)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_a_training_process_keeps_the_memory_it_frees():
    """keep_freed_memory (called by train_hf.py on a CPU): a freed 64 MB tensor stays in the process for the next
    step to reuse, where by default glibc hands it back to the kernel at once. In fresh processes: the setting
    is process-wide."""
    probe = ("import os, sys, torch\n"
             "from tinygpt.optim import keep_freed_memory\n"
             "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
             "applied = keep_freed_memory() if sys.argv[1] == 'keep' else False\n"
             "x = torch.ones(16 * 2**20)\n"  # 64 MB of float32, every page touched
             "held = rss()\n"
             "del x\n"
             "print(applied, (held - rss()) / 2**20)\n")
    returned = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", probe, mode], capture_output=True, text=True, check=True)
        applied, mb = out.stdout.split()
        assert applied == str(mode == "keep")
        returned[mode] = float(mb)
    assert returned["default"] > 60 and returned["keep"] < 1, returned


def test_sigmoid_gelu_is_gelu_new():
    """SigmoidGELU, which a model compiled for CPU training computes, is transformers' gelu_new and torch's tanh
    GELU, values and gradients, to float32 precision."""
    from transformers.activations import ACT2FN

    from tinygpt.optim import SigmoidGELU

    x = torch.linspace(-12, 12, 20001, dtype=torch.float64).float().requires_grad_()
    ours = SigmoidGELU()(x)
    (grad,) = torch.autograd.grad(ours.sum(), x)
    for reference in (ACT2FN["gelu_new"], torch.nn.GELU(approximate="tanh")):
        expected = reference(x)
        (expected_grad,) = torch.autograd.grad(expected.sum(), x)
        torch.testing.assert_close(ours, expected, atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(grad, expected_grad, atol=2e-6, rtol=1e-5)


def test_prepare_for_cpu_training_changes_only_a_compiled_cpu_run_and_no_saved_model(tmp_path):
    """Compiled CPU training: the eager attention and SigmoidGELU, the same logits; any other run untouched; the
    saved model loads with torch's GELU and the default attention."""
    from types import SimpleNamespace

    from tinygpt import TinyGPTForCausalLM
    from tinygpt.optim import SigmoidGELU, prepare_for_cpu_training

    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(0))
    reference = tiny_model()
    expected = reference(ids).logits
    for compiled, cpu in ((False, True), (True, False)):
        model = tiny_model()
        prepare_for_cpu_training(model, SimpleNamespace(torch_compile=compiled, use_cpu=cpu))
        assert all(type(layer.mlp.act) is torch.nn.GELU for layer in model.model.layers)
        assert model.config._attn_implementation == reference.config._attn_implementation
    model = tiny_model()
    prepare_for_cpu_training(model, SimpleNamespace(torch_compile=True, use_cpu=True))
    assert all(isinstance(layer.mlp.act, SigmoidGELU) for layer in model.model.layers)
    assert model.config._attn_implementation == "eager"
    torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = TinyGPTForCausalLM.from_pretrained(tmp_path)
    assert all(type(layer.mlp.act) is torch.nn.GELU for layer in loaded.model.layers)
    assert loaded.config._attn_implementation == reference.config._attn_implementation
    torch.testing.assert_close(loaded(ids).logits, expected, atol=1e-5, rtol=1e-5)
