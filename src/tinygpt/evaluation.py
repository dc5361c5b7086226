"""Held-out evaluation of a saved model: loss, perplexity and bits per byte (`tinygpt eval`)."""

import math

import torch
from tqdm.auto import tqdm

from .data import iter_stories


@torch.no_grad()
def evaluate_model(model, tokenizer, files, block_size: int | None = None, batch_size: int = 8) -> dict:
    """Stories joined with <|endoftext|> (as in training) and cut into blocks; the loss is averaged over every
    predicted token. Bits per byte = total nats / ln 2 / UTF-8 bytes of the stories, so tokenizers compare."""
    stories = list(iter_stories(files))
    block_size = block_size or model.config.max_position_embeddings
    if not 2 <= block_size <= model.config.max_position_embeddings:
        raise ValueError(f"block size {block_size} must be between 2 and the model's max_position_embeddings "
                         f"({model.config.max_position_embeddings})")
    stream = [i for row in tokenizer(stories, add_special_tokens=False).input_ids for i in row + [tokenizer.eos_token_id]]
    blocks = [stream[s:s + block_size] for s in range(0, len(stream), block_size)]
    blocks = [b for b in blocks if len(b) > 1]
    model.eval()
    total_nats, predicted = 0.0, 0
    for start in tqdm(range(0, len(blocks), batch_size), desc="evaluating", unit="batch"):
        batch = blocks[start:start + batch_size]
        width = max(len(b) for b in batch)
        ids = torch.tensor([b + [tokenizer.eos_token_id] * (width - len(b)) for b in batch], device=model.device)
        labels = torch.tensor([b + [-100] * (width - len(b)) for b in batch], device=model.device)
        count = int((labels[:, 1:] != -100).sum())
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        total_nats += loss.item() * count
        predicted += count
    n_bytes = sum(len(story.encode("utf-8")) for story in stories)
    loss = total_nats / predicted
    return {"stories": len(stories), "tokens": len(stream), "bytes": n_bytes, "loss": loss,
            "perplexity": math.exp(loss), "bits_per_byte": total_nats / math.log(2) / n_bytes}
