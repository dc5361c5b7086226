"""Story consistency without GPT-4: does the model prefer the right continuation of a story?

Each item (src/tinygpt/evals/consistency.jsonl, 78 written for this package in the spirit of the TinyStories
paper's evaluation prompts) is a story prefix with a right and a wrong one-word continuation: who has the ball
now, which pet was allowed, what a character feels after an event, everyday facts a child knows, names and roles,
cause and effect, details told earlier. The score is the share of items where the model gives the right
continuation the higher log-likelihood. Scored exactly as lm-evaluation-harness scores a multiple-choice task
(`acc` of the shipped `tinystories_consistency` task): continuation = " " + word, tokenized as part of the
whole text, summed log-probabilities, no extra token before the prefix.

    from tinygpt.consistency import evaluate_consistency
    evaluate_consistency(model, tokenizer)      # {"accuracy": 0.74, "correct": 58, "items": 78, "by_kind": {...}}
"""

import json
from collections import defaultdict
from importlib import resources

import torch

EVALS = resources.files("tinygpt") / "evals"  # the items and the lm-evaluation-harness task YAMLs


def load_items() -> list[dict]:
    """The consistency items: id, kind, prefix, right, wrong."""
    lines = (EVALS / "consistency.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _pair_ids(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's split: encode the whole text, the context's tokens are its first ones."""
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    context_ids = tokenizer(context, add_special_tokens=False).input_ids
    return whole[:len(context_ids)], whole[len(context_ids):]


@torch.no_grad()
def continuation_logprobs(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 32) -> list[float]:
    """Summed log-probability of each continuation given its context (cut from the left, as lm-eval does, where
    the two do not fit in the model's positions)."""
    limit = model.config.max_position_embeddings
    encoded = []
    for context, continuation in pairs:
        ctx, cont = _pair_ids(tokenizer, context, continuation)
        encoded.append((ctx[max(0, len(ctx) + len(cont) - limit):], cont))
    was_training = model.training
    model.eval()
    scores = []
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start:start + batch_size]
        rows = [ctx + cont for ctx, cont in batch]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [tokenizer.eos_token_id] * (width - len(r)) for r in rows], device=model.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=model.device)
        logprobs = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)  # (B, T, V)
        for row, (ctx, cont) in enumerate(batch):
            positions = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1, device=model.device)
            scores.append(float(logprobs[row, positions, torch.tensor(cont, device=model.device)].sum()))
    model.train(was_training)
    return scores


def evaluate_consistency(model, tokenizer, items: list[dict] | None = None) -> dict:
    """Share of items whose right continuation scores higher than the wrong one, overall and by kind."""
    items = load_items() if items is None else items
    pairs = [(item["prefix"], " " + choice) for item in items for choice in (item["right"], item["wrong"])]
    scores = continuation_logprobs(model, tokenizer, pairs)
    by_kind = defaultdict(list)
    for i, item in enumerate(items):
        by_kind[item["kind"]].append(scores[2 * i] >= scores[2 * i + 1])  # ties to the right one, as lm-eval
    correct = sum(sum(v) for v in by_kind.values())
    return {"accuracy": correct / len(items), "correct": correct, "items": len(items),
            "by_kind": {kind: sum(v) / len(v) for kind, v in by_kind.items()}}
