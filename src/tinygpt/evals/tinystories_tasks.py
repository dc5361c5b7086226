"""Datasets and result processing for the lm-evaluation-harness tasks in this folder (`--include_path`)."""

import json
from pathlib import Path


def consistency_items(**kwargs):
    import datasets

    # the same items as tinygpt.consistency.load_items: the generated ones, then the hand-written ones
    rows = []
    for name in ("consistency_generated.jsonl", "consistency.jsonl"):
        lines = Path(__file__).with_name(name).read_text(encoding="utf-8").splitlines()
        rows += [json.loads(line) for line in lines if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def stories(data_files=None, max_stories=None, **kwargs):
    """TinyStories' validation stories: local files through tinygpt's loader, else the Hub dataset."""
    import datasets

    if data_files:
        from tinygpt.data import load_texts

        texts = load_texts(data_files)
    else:
        texts = datasets.load_dataset("roneneldan/TinyStories", split="validation").select_columns(["text"])
    if max_stories:
        texts = texts.select(range(min(int(max_stories), len(texts))))
    return datasets.DatasetDict({"validation": texts})


def bits_per_byte_results(doc, results):
    (loglikelihood,) = results
    n_bytes = len(doc["text"].encode("utf-8"))
    return {"bits_per_byte": (loglikelihood, n_bytes), "byte_perplexity": (loglikelihood, n_bytes)}
