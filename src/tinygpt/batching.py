"""Stories decoded together: the requests that wait while a batch runs form the next batch, one left-padded
generate() call, each row with its own sampling settings, random generator, length and stop signal.

Used by the playground (`tinygpt app`, visitors) and the server (`tinygpt serve`, OpenAI clients), which check what
a story asks for with the rules here (`checked`, `new_tokens`: one set of bounds, one message each; `tinygpt
generate`, the compiled and the ONNX generators use them too). Built only on
generate()'s public hooks (a logits processor and a stopping criterion), so it works on every
transformers release the model loads on. Self-contained (torch and transformers only): `tinygpt space` copies it
beside the Space's app.py.

    batcher = StoryBatcher(tokenizer, model)
    story = Story(ids, dict(temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.0), seed=1,
                  max_new_tokens=100)
    batcher.submit(story)
    while (text := story.pieces.get()) is not None: ...   # the story so far after each token, then None
"""

import collections
import math
import queue
import threading

import torch
from transformers import (LogitsProcessor, LogitsProcessorList, RepetitionPenaltyLogitsProcessor, StoppingCriteria,
                          StoppingCriteriaList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

MAX_BATCH = 8  # stories decoded together, the playground's default (tinygpt serve: its own; BENCHMARKS.md, "Serving")
GREEDY = dict(temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0)
# What a story may ask for, (lowest, highest): temperature 0 is greedy, top_k 0 and top_p 1 keep every token.
BOUNDS = {"temperature": (0.0, 5.0), "top_k": (0, None), "top_p": (0.0, 1.0), "repetition_penalty": (0.5, 3.0),
          "seed": (0, 2**63 - 1), "max_new_tokens": (1, None)}
WHOLE = ("top_k", "seed", "max_new_tokens")  # whole numbers
ABOVE_LOWEST = ("top_p",)  # top_p 0 would keep no token


class SettingError(ValueError):
    """A setting a story cannot have; the message names the setting, its value and the limit."""


def checked(name: str, value, label: str | None = None):
    """`value` as the number setting `name` takes (see BOUNDS), or a SettingError naming it as `label` (the
    caller's own name for it: a form field, an API field, a command-line option)."""
    label = label or name
    low, high = BOUNDS[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SettingError(f"{label} must be a number, got {value!r}")
    if name in WHOLE and value != int(value):
        raise SettingError(f"{label} must be a whole number, got {value!r}")
    if not (low < value if name in ABOVE_LOWEST else low <= value) or (high is not None and value > high):
        lowest = f"> {low:g}" if name in ABOVE_LOWEST else f">= {low:g}"
        raise SettingError(f"{label} must be a number {lowest}{'' if high is None else f' and <= {high:g}'}, "
                           f"got {value!r}")
    return int(value) if name in WHOLE else float(value)  # transformers' warpers refuse an int penalty of 1


def new_tokens(prompt_tokens: int, max_new_tokens, positions: int, label: str = "max_new_tokens") -> int:
    """How many tokens a story of a `prompt_tokens` prompt may add: `max_new_tokens`, or all the positions the
    prompt leaves if None. A SettingError where the prompt, or the prompt and the new tokens, do not fit the
    model's `positions` (the context it was trained on)."""
    if prompt_tokens >= positions:
        raise SettingError(f"the prompt is {prompt_tokens} tokens, but the model has {positions} positions: "
                           f"shorten it to at most {positions - 1} tokens")
    if max_new_tokens is None:
        return positions - prompt_tokens
    max_new_tokens = checked("max_new_tokens", max_new_tokens, label)
    if prompt_tokens + max_new_tokens > positions:
        raise SettingError(f"the prompt ({prompt_tokens} tokens) plus {label} ({max_new_tokens}) is past the "
                           f"model's {positions} positions: ask for at most {positions - prompt_tokens}")
    return max_new_tokens


def pad_token_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its end-of-text token (as GPT-2's)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


class Story:
    """One story asked for: the prompt's ids (T,), its sampling settings (temperature 0: greedy), seed and length,
    a stop event, the queue its text arrives on (the story so far after each token, then None; an Exception if
    decoding failed), and, once done, its tokens and whether it ended at the end-of-text token."""

    def __init__(self, ids: torch.Tensor, settings: dict, seed: int, max_new_tokens: int):
        self.ids, self.settings, self.max_new_tokens = ids, {**GREEDY, **settings}, max_new_tokens
        self.generator = torch.Generator().manual_seed(seed)  # its own: the story does not depend on the others
        self.stop, self.pieces, self.tokens, self.closed = threading.Event(), queue.Queue(), [], False
        self.ended_at_eos = False


class StoryBatcher:
    """Stories of one model decoded together: those asked for while a batch runs form the next batch (up to
    max_batch, as many as fit in the positions together). A seeded story is the one it would be alone."""

    def __init__(self, tokenizer, model, max_batch: int = MAX_BATCH):
        self.tokenizer, self.model, self.waiting, self.max_batch = tokenizer, model, queue.Queue(), max_batch
        self.batch_sizes = collections.Counter()  # how many batches of each size were decoded
        self.pad = pad_token_id(tokenizer)
        threading.Thread(target=self._serve, daemon=True).start()

    def submit(self, story: Story) -> None:
        self.waiting.put(story)

    def _serve(self):
        held = None  # a story that did not fit beside the last batch starts the next one
        while True:
            batch = [held or self.waiting.get()]
            held = None
            while len(batch) < self.max_batch and held is None:
                try:
                    story = self.waiting.get_nowait()
                except queue.Empty:
                    break
                fits = (max(len(s.ids) for s in batch + [story]) + max(s.max_new_tokens for s in batch + [story])
                        <= self.model.config.max_position_embeddings)
                batch, held = (batch + [story], None) if fits else (batch, story)
            self.batch_sizes[len(batch)] += 1
            try:
                self._decode(batch)
            except Exception as error:  # noqa: BLE001 - each story's reader reports it; the batcher goes on
                for story in batch:
                    story.pieces.put(error)
            for story in batch:
                story.closed = True
                story.pieces.put(None)  # a second None, after RowStop's, is never read

    @torch.no_grad()
    def _decode(self, batch: list):
        width = max(len(s.ids) for s in batch)
        ids = torch.full((len(batch), width), self.pad, dtype=torch.long)  # (B, T), padded on the left
        mask = torch.zeros_like(ids)
        for row, story in enumerate(batch):
            ids[row, width - len(story.ids):], mask[row, width - len(story.ids):] = story.ids, 1
        device = self.model.device
        self.model.generate(ids.to(device), attention_mask=mask.to(device), do_sample=False, pad_token_id=self.pad,
                            max_new_tokens=max(s.max_new_tokens for s in batch),
                            logits_processor=LogitsProcessorList([RowSampler(batch, width)]),
                            stopping_criteria=StoppingCriteriaList([RowProgress(batch, width, self.tokenizer)]))


def warpers(settings: dict) -> list:
    """transformers' own logits processors for a story's settings, in generate()'s order: repetition penalty,
    temperature (none at 0: greedy), top-k (none at 0), top-p (none at 1). The one sampler of the package: the
    batcher's rows and the ONNX generator choose through it."""
    settings = {**GREEDY, **settings}
    return [RepetitionPenaltyLogitsProcessor(settings["repetition_penalty"]),
            *([TemperatureLogitsWarper(settings["temperature"])] if settings["temperature"] else []),
            *([TopKLogitsWarper(settings["top_k"])] if settings["top_k"] > 0 else []),
            *([TopPLogitsWarper(settings["top_p"])] if settings["top_p"] < 1 else [])]


class RowSampler(LogitsProcessor):
    """Each row's next token chosen with its own settings and random generator (argmax at temperature 0); the
    chosen token is the only one left, so generate()'s greedy step takes it."""

    def __init__(self, batch: list, width: int):
        self.batch, self.width = batch, width
        self.warpers = [warpers(s.settings) for s in batch]

    def __call__(self, input_ids, scores):  # (B, S), (B, V)
        chosen = torch.full_like(scores, float("-inf"))
        for row, story in enumerate(self.batch):
            own = input_ids[row:row + 1, self.width - len(story.ids):]  # without the padding
            row_scores = scores[row:row + 1].float()
            for warper in self.warpers[row]:
                row_scores = warper(own, row_scores)
            if story.settings["temperature"] == 0:
                token = row_scores[0].argmax(-1, keepdim=True)
            else:
                token = torch.multinomial(row_scores.softmax(-1)[0].cpu(), 1, generator=story.generator)
            chosen[row, token] = 0.0
        return chosen


class RowProgress(StoppingCriteria):
    """After each step (generate() asks its stopping criteria with every new token): each open row's new token goes
    to its story, whose reader gets the text so far; a row ends at its end-of-text token, its own length or its
    stop event, and its reader hears so at once (None), not when the whole batch ends. A stopping criterion, not a
    streamer, because it sees the tokens and decides the end in one place, in the same order in every release."""

    def __init__(self, batch: list, width: int, tokenizer):
        self.batch, self.width, self.tokenizer = batch, width, tokenizer

    def __call__(self, input_ids, scores, **kwargs):
        made = input_ids.shape[1] - self.width
        eos = self.tokenizer.eos_token_id
        for row, story in enumerate(self.batch):
            if story.closed:  # what generate() adds to its row now is padding
                continue
            story.tokens.append(int(input_ids[row, -1]))
            text = self.tokenizer.decode(story.tokens, skip_special_tokens=True)
            if not text.endswith("\ufffd"):  # half of a character: wait for the rest
                story.pieces.put(text)
            story.ended_at_eos = story.tokens[-1] == eos
            if story.ended_at_eos or story.stop.is_set() or made >= story.max_new_tokens:
                story.closed = True
                story.pieces.put(None)
        return torch.tensor([s.closed for s in self.batch], device=input_ids.device)
