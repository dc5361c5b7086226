"""Reduced-vocabulary tokenizers for TinyStories.

Two builders, each returning a `PreTrainedTokenizerFast` with `<|endoftext|>` as bos, eos and pad token and
as the last id (as 50256 is in GPT-Neo's vocabulary), so 8,000 regular tokens make the seed's 8,001 ids:

    prune_tokenizer(data, vocab_size=8000, source="EleutherAI/gpt-neo-125M", out_dir=DIR)   # the seed's method
    train_tokenizer(data, vocab_size=8000, out_dir=DIR)                                      # a fresh byte-level BPE

`data` is TinyStories .txt files (paths) or the stories themselves (any iterable of strings, e.g. a dataset's
"text" column), so any dataset feeds the builders directly.

Pruning counts GPT-Neo's tokens over the corpus and keeps the most frequent, always with the 256 byte-level
symbols (so every string still encodes) and with every ancestor of a kept token in the merge tree (so every
kept token stays reachable). Each GPT-Neo token is made by exactly one merge, so on text whose GPT-Neo tokens
are all kept, the pruned tokenizer gives exactly GPT-Neo's tokens, under new ids (`gpt_neo_ids(tokenizer)` maps them
back; the map is saved in tokenizer_config.json, so it travels with the tokenizer). `vocab_size` counts the
regular tokens, bytes included; the special tokens come on top.
"""

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .data import iter_stories
from .evaluation import utf8_bytes

DEFAULT_SOURCE = "EleutherAI/gpt-neo-125M"
EOT = "<|endoftext|>"
# The pruned tokenizer's map new id -> GPT-Neo id, kept in tokenizer_config.json (an init argument of the
# tokenizer), so it travels with every save_pretrained and from_pretrained of the tokenizer.
ID_MAP_KEY = "gpt_neo_ids"
COVERAGE_FILE = "coverage.json"
BYTE_SYMBOLS = 256
COVERAGE_KS = (8000, 10000)
_BATCH = 512

# ----------------------------------------------------------------------------- the source tokenizer


def load_source_tokenizer(source=DEFAULT_SOURCE) -> Tokenizer:
    """GPT-Neo's byte-level BPE from a tokenizer.json file, a folder (tokenizer.json, vocab.json + merges.txt,
    or OpenAI's encoder.json + vocab.bpe), or a Hub id."""
    path = Path(source)
    if path.is_file():
        tokenizer = Tokenizer.from_file(str(path))
    elif path.is_dir():
        tokenizer = _tokenizer_from_folder(path)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source)).backend_tokenizer
        except Exception as error:  # noqa: BLE001 - any failure means the same thing to the user
            raise ValueError(f"tokenizer source {str(source)!r} is not a local file or folder and could not be "
                             f"loaded from the Hub: {error}") from None
    if json.loads(tokenizer.to_str())["model"]["type"] != "BPE":
        raise ValueError(f"tokenizer source {str(source)!r} is not a BPE tokenizer")
    if tokenizer.token_to_id(EOT) is None:
        raise ValueError(f"tokenizer source {str(source)!r} has no {EOT} token")
    return tokenizer


def _tokenizer_from_folder(path: Path) -> Tokenizer:
    if (path / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    for vocab, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        if (path / vocab).is_file() and (path / merges).is_file():
            tokenizer = Tokenizer(models.BPE.from_file(str(path / vocab), str(path / merges)))
            tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tokenizer.decoder = decoders.ByteLevel()
            tokenizer.add_special_tokens([EOT])
            return tokenizer
    raise ValueError(f"{path}: holds no tokenizer.json, vocab.json + merges.txt, or encoder.json + vocab.bpe")


def count_token_ids(tokenizer: Tokenizer, stories: list[str], desc="counting tokens") -> np.ndarray:
    """How often each id occurs when the stories are encoded one by one (batched, multi-threaded)."""
    counts = np.zeros(tokenizer.get_vocab_size(), dtype=np.int64)
    for start in tqdm(range(0, len(stories), _BATCH), desc=desc, unit="batch"):
        for encoding in tokenizer.encode_batch(stories[start:start + _BATCH], add_special_tokens=False):
            counts += np.bincount(encoding.ids, minlength=len(counts))[: len(counts)]
    return counts


# ----------------------------------------------------------------------------- pruning


def _pair(merge) -> tuple[str, str]:
    """A merge as tokenizer.json stores it: "a b" (older files) or ["a", "b"]."""
    return tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge)


def _merge_parents(model: dict) -> dict[str, tuple[str, str]]:
    """token -> the pair whose merge makes it (one merge per token in a BPE)."""
    return {a + b: (a, b) for a, b in map(_pair, model["merges"])}


def select_kept_tokens(source_json: dict, counts: np.ndarray, vocab_size: int) -> list[int]:
    """Source ids of the `vocab_size` regular tokens to keep: the byte symbols, then the most frequent tokens
    together with their merge-tree ancestors; tokens the corpus never uses fill any room left, in merge order."""
    vocab = source_json["model"]["vocab"]
    specials = {t["content"] for t in source_json["added_tokens"] if t["special"]}
    parents = _merge_parents(source_json["model"])
    base = {token for token in vocab if token not in parents and token not in specials}
    regular = len(vocab) - len(specials & vocab.keys())
    if vocab_size < len(base):
        raise ValueError(f"vocab_size {vocab_size} is below the {len(base)} byte-level symbols every string needs")
    if vocab_size > regular:
        raise ValueError(f"vocab_size {vocab_size} is above the source vocabulary's {regular} regular tokens")
    id_to_token = {i: t for t, i in vocab.items()}
    kept = set(base)
    order = sorted((i for i in id_to_token if id_to_token[i] not in specials), key=lambda i: (-counts[i], i))
    for token_id in order:
        if len(kept) == vocab_size:
            break
        missing, stack = [], [id_to_token[token_id]]
        while stack:  # the token and its ancestors that are not kept yet
            token = stack.pop()
            if token not in kept and token not in missing:
                missing.append(token)
                stack.extend(parents[token])
        if len(kept) + len(missing) <= vocab_size:
            kept.update(missing)
    return sorted(vocab[token] for token in kept)


def pruned_tokenizer_json(source_json: dict, kept_ids: list[int]) -> tuple[dict, list[int]]:
    """The source tokenizer.json restricted to kept_ids (in source order) plus the special tokens at the end.
    Returns the new JSON and the map new id -> source id."""
    specials = [t for t in source_json["added_tokens"] if t["special"]]
    old_ids = list(kept_ids) + [t["id"] for t in specials]
    id_to_token = {i: t for t, i in source_json["model"]["vocab"].items()}
    id_to_token.update({t["id"]: t["content"] for t in specials})
    new_vocab = {id_to_token[old]: new for new, old in enumerate(old_ids)}
    merges = [m for m in source_json["model"]["merges"]
              if all(t in new_vocab for t in (*_pair(m), "".join(_pair(m))))]
    pruned = json.loads(json.dumps(source_json))
    pruned["model"]["vocab"] = new_vocab
    pruned["model"]["merges"] = merges
    pruned["added_tokens"] = [dict(t, id=new_vocab[t["content"]]) for t in specials]
    return pruned, old_ids


def corpus_stories(data) -> list[str]:
    """The stories of `data`: TinyStories .txt files (a path, or paths: os.PathLike, or str naming a file or
    ending in .txt), else the texts themselves."""
    items = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if items and all(isinstance(x, os.PathLike) or isinstance(x, str) and (x.endswith(".txt") or os.path.isfile(x))
                     for x in items):
        return list(iter_stories(items))
    stories = [text.strip() for text in items if isinstance(text, str) and text.strip()]
    if not stories:
        raise ValueError("no stories to build a tokenizer from")
    return stories


def prune_tokenizer(data, vocab_size: int = 8000, source=DEFAULT_SOURCE, out_dir=None) -> PreTrainedTokenizerFast:
    """GPT-Neo's tokenizer cut to the `vocab_size` tokens the corpus uses most (see the module docstring).
    With out_dir, also saves it with the coverage report there."""
    stories = corpus_stories(data)
    source_tokenizer = load_source_tokenizer(source)
    source_json = json.loads(source_tokenizer.to_str())
    counts = count_token_ids(source_tokenizer, stories, desc="counting GPT-Neo tokens")
    kept = select_kept_tokens(source_json, counts, vocab_size)
    pruned_json, old_ids = pruned_tokenizer_json(source_json, kept)
    tokenizer = wrap_tokenizer(Tokenizer.from_str(json.dumps(pruned_json)), **{ID_MAP_KEY: old_ids})
    if out_dir is not None:
        report = coverage_report(stories, source_tokenizer, counts, {"pruned": tokenizer})
        save_tokenizer(tokenizer, out_dir, report)
    return tokenizer


def gpt_neo_ids(tokenizer) -> list[int]:
    """The GPT-Neo id of each id of a pruned tokenizer (a tokenizer object or its folder)."""
    if not hasattr(tokenizer, "init_kwargs"):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    ids = tokenizer.init_kwargs.get(ID_MAP_KEY)
    if not ids:
        raise ValueError(f"the tokenizer {tokenizer.name_or_path!r} has no map to GPT-Neo's ids ({ID_MAP_KEY} in "
                         "tokenizer_config.json): only a tokenizer made by prune_tokenizer has one")
    return list(ids)


# ----------------------------------------------------------------------------- training


def train_tokenizer(data, vocab_size: int = 8000, out_dir=None, source=None) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2's pre-tokenizer) of `vocab_size` regular tokens trained on the corpus.
    With out_dir, saves it with a coverage report (against `source`, GPT-Neo's tokenizer, when given)."""
    stories = corpus_stories(data)
    if vocab_size < BYTE_SYMBOLS:
        raise ValueError(f"vocab_size {vocab_size} is below the {BYTE_SYMBOLS} byte-level symbols every string needs")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size + 1, special_tokens=[EOT], show_progress=True,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(stories, trainer, length=len(stories))
    tokenizer = wrap_tokenizer(_move_special_tokens_last(tokenizer))
    if out_dir is not None:
        report = {}
        if source is not None:
            source_tokenizer = load_source_tokenizer(source)
            counts = count_token_ids(source_tokenizer, stories, desc="counting GPT-Neo tokens")
            report = coverage_report(stories, source_tokenizer, counts, {"trained": tokenizer})
        save_tokenizer(tokenizer, out_dir, report)
    return tokenizer


def _move_special_tokens_last(tokenizer: Tokenizer) -> Tokenizer:
    """The BPE trainer puts special tokens first; we keep them last, as GPT-Neo does."""
    data = json.loads(tokenizer.to_str())
    specials = [t["content"] for t in data["added_tokens"]]
    regular = [t for t, _ in sorted(data["model"]["vocab"].items(), key=lambda item: item[1]) if t not in specials]
    data["model"]["vocab"] = {t: i for i, t in enumerate(regular + specials)}
    data["added_tokens"] = [dict(t, id=data["model"]["vocab"][t["content"]]) for t in data["added_tokens"]]
    return Tokenizer.from_str(json.dumps(data))


# ----------------------------------------------------------------------------- wrapping, saving, coverage


def wrap_tokenizer(tokenizer: Tokenizer, **init_kwargs) -> PreTrainedTokenizerFast:
    """init_kwargs are saved in tokenizer_config.json and come back on loading (the GPT-Neo id map)."""
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOT, eos_token=EOT, pad_token=EOT,
                                   unk_token=EOT, clean_up_tokenization_spaces=False, **init_kwargs)


# from_pretrained's own arguments, which transformers keeps in init_kwargs and save_pretrained writes back
LOAD_TIME_KEYS = ("is_local", "local_files_only")


def prepare_to_ship(tokenizer, positions: int):
    """Changes `tokenizer` in place (and returns it) into the tokenizer as it ships beside a model: it knows the
    model's context (so `truncation=True` cuts there instead of at transformers' "unset" 1e30) and carries none of
    the arguments it was loaded with."""
    tokenizer.model_max_length = positions
    for key in LOAD_TIME_KEYS:
        tokenizer.init_kwargs.pop(key, None)
    return tokenizer


def load_for_model(folder, positions: int):
    """The tokenizer saved in a model folder, ready to ship beside the model (`prepare_to_ship`), or a clear error."""
    if Path(folder).is_dir() and not (Path(folder) / "tokenizer.json").is_file():
        raise ValueError(f"{folder}: no tokenizer (tokenizer.json); a folder written by train_hf.py has one, or "
                         f"save one into it with tokenizer.save_pretrained")
    return prepare_to_ship(AutoTokenizer.from_pretrained(folder), positions)


def save_tokenizer(tokenizer, out_dir, report: dict) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / COVERAGE_FILE).write_text(json.dumps(report, indent=2))


def coverage_report(stories, source_tokenizer: Tokenizer, counts: np.ndarray, built: dict) -> dict:
    """The seed's coverage figures: the share of words and of GPT-Neo tokens covered by the top K GPT-Neo tokens,
    and bytes per token of GPT-Neo's tokenizer and of the built ones.

    A word (whitespace-split) is covered when every GPT-Neo token of " " + word is in the top K; words are
    tokenized with their leading space, as they mostly stand in running text.
    """
    eot = source_tokenizer.token_to_id(EOT)
    counts = counts.copy()
    counts[eot] = 0
    order = np.argsort(-counts, kind="stable")
    words = Counter(word for story in stories for word in story.split())
    word_ids = [e.ids for e in source_tokenizer.encode_batch([" " + w for w in words], add_special_tokens=False)]
    total_bytes = utf8_bytes(stories)
    report = {"corpus": {"stories": len(stories), "bytes": total_bytes, "words": sum(words.values()),
                         "gpt_neo_tokens": int(counts.sum()),
                         "distinct_gpt_neo_tokens": int((counts > 0).sum())},
              "top_k": [], "tokenizers": {}}
    for k in COVERAGE_KS:
        top = np.zeros(len(counts), dtype=bool)
        top[order[:k]] = True
        covered_words = sum(n for n, ids in zip(words.values(), word_ids) if top[ids].all())
        report["top_k"].append({"k": k, "word_coverage": covered_words / sum(words.values()),
                                "token_coverage": float(counts[top].sum() / counts.sum())})
    report["tokenizers"]["gpt-neo"] = {"vocab": source_tokenizer.get_vocab_size(),
                                       "bytes_per_token": total_bytes / counts.sum()}
    for name, tokenizer in built.items():
        n_tokens = sum(len(e.ids) for s in range(0, len(stories), _BATCH) for e in
                       tokenizer.backend_tokenizer.encode_batch(stories[s:s + _BATCH], add_special_tokens=False))
        report["tokenizers"][name] = {"vocab": len(tokenizer), "bytes_per_token": total_bytes / n_tokens}
    return report


def format_coverage(report: dict) -> str:
    corpus = report["corpus"]
    lines = [f"corpus: {corpus['stories']:,} stories, {corpus['bytes']:,} bytes, {corpus['words']:,} words, "
             f"{corpus['gpt_neo_tokens']:,} GPT-Neo tokens ({corpus['distinct_gpt_neo_tokens']:,} distinct)", "",
             "| top K GPT-Neo tokens | words covered | tokens covered |", "|--:|--:|--:|"]
    lines += [f"| {row['k']:,} | {100 * row['word_coverage']:.2f}% | {100 * row['token_coverage']:.2f}% |"
              for row in report["top_k"]]
    lines += ["", "| tokenizer | vocabulary | bytes per token |", "|---|--:|--:|"]
    lines += [f"| {name} | {row['vocab']:,} | {row['bytes_per_token']:.3f} |"
              for name, row in report["tokenizers"].items()]
    return "\n".join(lines)
