"""Held-out evaluation: loss, perplexity and bits per byte. The one definition, used by the evaluations during
training, the final evaluation in `training_summary.json`, `tinygpt eval` and the benchmarks.

The stories are joined with <|endoftext|> after each (as in training) and cut into blocks of the model's
context; the last, shorter block is evaluated too, so every token after the first of a block is predicted
exactly once. loss = mean nats per predicted token; bits per byte = all nats / ln 2 / UTF-8 bytes of the
stories, which compares models with different tokenizers.
"""

import contextlib
import math
from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from .data import CausalLMCollator, pack, story_ids


@contextlib.contextmanager
def evaluating(model):
    """The model in eval mode without gradients inside the block; its former mode back afterwards, also when the
    block raises (every evaluation, sampling and scoring in the package goes through here)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def utf8_bytes(texts: Iterable[str]) -> int:
    """The denominator of bits per byte."""
    return sum(len(text.encode("utf-8")) for text in texts)


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
    return total_nats / math.log(2) / n_bytes


def evaluation_blocks(texts: Iterable[str], tokenizer, block_size: int) -> tuple[list[list[int]], int]:
    """The token blocks of the stories (packed as for training, the last block kept) and their UTF-8 bytes."""
    texts = list(texts)
    if not texts:
        raise ValueError("no stories to evaluate")
    blocks = pack(story_ids(tokenizer, texts), block_size, keep_tail=True)
    return [b for b in blocks if len(b) > 1], utf8_bytes(texts)


def evaluate_texts(model, tokenizer, texts: Iterable[str], block_size: int | None = None, batch_size: int = 16,
                   progress: bool = True, stories_apart: bool = False) -> dict:
    """Loss, perplexity and bits per byte of the model on the stories, in float32 and eval mode."""
    block_size = block_size or model.config.max_position_embeddings
    if not 2 <= block_size <= model.config.max_position_embeddings:
        raise ValueError(f"block size {block_size} must be between 2 and the model's max_position_embeddings "
                         f"({model.config.max_position_embeddings})")
    texts = list(texts)
    blocks, n_bytes = evaluation_blocks(texts, tokenizer, block_size)
    collate = CausalLMCollator(tokenizer.eos_token_id, stories_apart)  # the padding and labels of training's batches
    total_nats, predicted = 0.0, 0
    with evaluating(model):
        for start in tqdm(range(0, len(blocks), batch_size), desc="evaluating", unit="batch", disable=not progress):
            batch = collate([{"input_ids": b} for b in blocks[start:start + batch_size]])
            batch = {name: tensor.to(model.device) for name, tensor in batch.items()}
            count = int((batch["labels"][:, 1:] != -100).sum())
            total_nats += model(**batch, use_cache=False).loss.item() * count  # no cache: nothing is generated
            predicted += count
    loss = total_nats / predicted
    return {"stories": len(texts), "stories_apart": stories_apart, "blocks": len(blocks),
            "block_size": block_size, "tokens": predicted + len(blocks), "bytes": n_bytes, "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)), "bits_per_byte": bits_per_byte(total_nats, n_bytes)}
