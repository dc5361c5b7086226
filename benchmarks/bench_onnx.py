"""Batch-1 generation speed and size on disk: PyTorch eager generate(), the compiled decode step, and the ONNX
export on onnxruntime in float32 and int8 (BENCHMARKS.md, "Run anywhere").

    python benchmarks/bench_onnx.py                 # the seed shape and the CPU preset, about 6 minutes here

Random weights (seed 0) of each preset with the 8,001-token vocabulary; a 16-token prompt, 200 new tokens,
greedy, the end-of-text token disabled so every run makes all 200; median of 3 runs after a warm-up run (which
also compiles). Threads: torch's and onnxruntime's defaults (both use every core).
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tinygpt import TinyGPTConfig, TinyGPTForCausalLM
from tinygpt.compiled import CompiledGenerator
from tinygpt.onnx_export import INT8_FILE, ONNX_FILE, OnnxGenerator, export_onnx

PROMPT, NEW = 16, 200


def timed(run, repeats: int = 3) -> float:
    run()  # warm-up (and compilation)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def bench(preset: str) -> list[dict]:
    torch.manual_seed(0)
    model = TinyGPTForCausalLM(TinyGPTConfig.from_preset(preset, bos_token_id=None, eos_token_id=None)).eval()
    ids = torch.randint(0, 8000, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        _write_tokenizer_stub(tmp)
        out = export_onnx(tmp, Path(tmp) / "onnx-export", int8=True)
        sizes = {"pytorch": (Path(tmp) / "model.safetensors").stat().st_size, "onnx": (out / ONNX_FILE).stat().st_size,
                 "int8": (out / INT8_FILE).stat().st_size}
        with torch.no_grad():
            rows.append(("PyTorch eager generate()", timed(lambda: model.generate(ids, **kwargs)), sizes["pytorch"]))
            compiled = CompiledGenerator(model)
            rows.append(("PyTorch compiled decode", timed(lambda: compiled.generate(ids, **kwargs)), sizes["pytorch"]))
        for label, int8 in (("onnxruntime float32", False), ("onnxruntime int8", True)):
            generator = OnnxGenerator(out, int8=int8)
            rows.append((label, timed(lambda: generator.generate(ids.numpy(), max_new_tokens=NEW)),
                         sizes["int8" if int8 else "onnx"]))
    return [{"preset": preset, "runtime": label, "tokens_per_s": round(NEW / seconds, 1), "size_mb": round(size / 1e6, 1)}
            for label, seconds, size in rows]


def _write_tokenizer_stub(folder) -> None:
    """export_onnx copies the tokenizer; a benchmark of random weights needs only a placeholder one."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(8000)} | {"<|endoftext|>": 8000}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>")),
                            eos_token="<|endoftext|>").save_pretrained(folder)


def main(argv=None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)  # no options; answers --help
    print(f"threads: torch {torch.get_num_threads()}; numpy {np.__version__}")
    rows = [row for preset in ("tinystories-41m", "tinystories-cpu") for row in bench(preset)]
    print("| model | runtime | tokens/s (batch 1) | size on disk (MB) |\n|---|---|--:|--:|")
    for row in rows:
        print(f"| {row['preset']} | {row['runtime']} | {row['tokens_per_s']:.1f} | {row['size_mb']:.1f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
