"""TinyStories data: reading files, loading datasets, tokenizing and packing them for training.

Inputs: the Hub dataset (`load_dataset("roneneldan/TinyStories")`, or a local dataset folder), or local files:
the original .txt format (each story followed by a line `<|endoftext|>`), .json/.jsonl with a text field, and
.parquet. Every problem with an input file (missing, empty, not UTF-8) is reported with the file's name and
line, instead of a traceback from deep inside a tokenizer or a dataset builder.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

STORY_SEPARATOR = "<|endoftext|>"
TEXT_SUFFIXES = {".txt": "txt", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class DataFileError(ValueError):
    """A data file that cannot be used; the message names the file and the problem."""


# ----------------------------------------------------------------------------- files


def check_data_file(path) -> Path:
    """The path, once it is known to be an existing, non-empty file, and (unless parquet) valid UTF-8."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: no such file")
    if not path.is_file():
        raise DataFileError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise DataFileError(f"{path}: the file is empty")
    if path.suffix == ".parquet":
        return path
    blank = True
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):  # "\n" is ASCII, so no character spans two lines
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataFileError(f"{path}: not valid UTF-8 at line {number} (byte {line[error.start:error.start + 1]!r}"
                                    f" in column {error.start + 1}); re-encode the file as UTF-8") from None
            blank = blank and not text.strip()
    if blank:
        raise DataFileError(f"{path}: the file is empty")
    return path


def iter_file_stories(path) -> Iterator[str]:
    """Stories of one TinyStories .txt file, stripped; a file without separators is one story."""
    lines = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            *finished, rest = line.split(STORY_SEPARATOR)
            for piece in finished:
                story = ("".join(lines) + piece).strip()
                lines = []
                if story:
                    yield story
            lines.append(rest)
    story = "".join(lines).strip()
    if story:
        yield story


def read_stories(path) -> list[str]:
    stories = list(iter_file_stories(check_data_file(path)))
    if not stories:
        raise DataFileError(f"{path}: holds no stories, only separators")
    return stories


def iter_stories(files: Iterable) -> Iterator[str]:
    """Stories of several .txt files in order; every file is checked before any story is yielded."""
    files = [Path(f) for f in ([files] if isinstance(files, (str, Path)) else files)]
    if not files:
        raise DataFileError("no data files given")
    for path in files:
        check_data_file(path)
    for path in files:
        yield from iter_file_stories(path)


def _txt_examples(paths, fingerprint=None):
    """Generator for datasets' from_generator; `fingerprint` (sizes and mtimes) keys the cache to the contents."""
    for path in paths:
        for story in iter_file_stories(path):
            yield {"text": story}


# ----------------------------------------------------------------------------- datasets


@dataclass
class DataArguments:
    dataset_name: str = field(default="roneneldan/TinyStories",
                              metadata={"help": "Hub dataset id or local dataset folder (when no --train_file)"})
    dataset_config: str | None = field(default=None, metadata={"help": "the dataset's configuration name"})
    train_file: list[str] | None = field(default=None, metadata={"help": ".txt (TinyStories), .json/.jsonl, .parquet"})
    validation_file: list[str] | None = field(default=None, metadata={"help": "same formats as --train_file"})
    text_column: str = field(default="text", metadata={"help": "the text field of .json/.parquet/Hub data"})
    validation_split_percentage: float = field(default=2.0, metadata={
        "help": "share of the training data held out when there is no validation file or split"})
    block_size: int | None = field(default=None, metadata={"help": "tokens per row; default: the model's positions"})
    packing: bool = field(default=True, metadata={
        "help": "pack stories into full blocks with <|endoftext|> between them; --no_packing: one story per row"})
    streaming: bool = field(default=False, metadata={"help": "stream the data instead of loading it (large corpora)"})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "processes for tokenization"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use only the first N training stories"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use only the first N validation stories"})
    stories_apart: bool = field(default=False, metadata={
        "help": "in packed blocks each story attends only to itself, from position 0 (as read alone)"})
    eval_subset_stories: int | None = field(default=None, metadata={
        "help": "evaluations during training use the first N validation stories; the final one uses them all"})


def _load_files(files: list[str], streaming: bool, text_column: str):
    import datasets

    paths = [check_data_file(f) for f in files]
    kinds = {TEXT_SUFFIXES.get(p.suffix) for p in paths}
    if None in kinds or len(kinds) != 1:
        raise DataFileError(f"data files must all be one of {sorted(TEXT_SUFFIXES)}, got {[str(p) for p in paths]}")
    kind = kinds.pop()
    if kind == "txt":
        stamp = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
        builder = datasets.IterableDataset if streaming else datasets.Dataset
        return builder.from_generator(_txt_examples, gen_kwargs={"paths": [str(p) for p in paths],
                                                                 "fingerprint": stamp})
    data = datasets.load_dataset(kind, data_files=[str(p) for p in paths], split="train", streaming=streaming)
    columns = data.column_names if data.column_names is not None else list(next(iter(data)))
    if text_column not in columns:
        raise DataFileError(f"{paths[0]}: no {text_column!r} field (fields: {columns}); set --text_column")
    return _text_only(data, text_column)


def load_texts(source, split: str = "validation", text_column: str = "text"):
    """A Dataset with a "text" column: from files (.txt, .json/.jsonl, .parquet, all of one kind) or, when
    `source` names no file, from a dataset folder or Hub id (its `split`)."""
    import datasets

    sources = [source] if isinstance(source, (str, Path)) else list(source)
    first = Path(sources[0])
    if len(sources) == 1 and (first.is_dir() or not first.exists() and first.suffix not in TEXT_SUFFIXES):
        try:
            data = datasets.load_dataset(str(sources[0]), split=split)
        except Exception as error:  # noqa: BLE001 - offline, unknown id, bad folder: one clear message
            raise DataFileError(f"could not load the {split!r} split of dataset {str(sources[0])!r} "
                                f"({type(error).__name__}: {error})") from None
        if text_column not in data.column_names:
            raise DataFileError(f"{sources[0]}: no {text_column!r} field (fields: {data.column_names})")
        return _text_only(data, text_column)
    return _load_files([str(s) for s in sources], streaming=False, text_column=text_column)


def _text_only(data, text_column: str):
    data = data.select_columns([text_column])
    return data.rename_column(text_column, "text") if text_column != "text" else data


def load_raw_datasets(args: DataArguments, seed: int = 42):
    """A DatasetDict (IterableDatasetDict when streaming) with "train" and "validation", each with "text"."""
    import datasets

    if args.train_file:
        raw = datasets.DatasetDict({"train": _load_files(args.train_file, args.streaming, args.text_column)})
    else:
        try:
            raw = datasets.load_dataset(args.dataset_name, args.dataset_config, streaming=args.streaming)
        except Exception as error:  # noqa: BLE001 - offline, unknown id, bad folder: one clear message
            raise DataFileError(f"could not load dataset {args.dataset_name!r} ({type(error).__name__}: {error}); "
                                "offline, pass local files with --train_file/--validation_file") from None
        raw = {split: _text_only(data, args.text_column) for split, data in raw.items()}
    if args.validation_file:
        raw["validation"] = _load_files(args.validation_file, args.streaming, args.text_column)
    elif "validation" not in raw:
        raw = _hold_out(raw["train"], args, seed)
    if args.max_train_samples:
        raw["train"] = raw["train"].take(args.max_train_samples)
    if args.max_eval_samples:
        raw["validation"] = raw["validation"].take(args.max_eval_samples)
    kind = datasets.IterableDatasetDict if args.streaming else datasets.DatasetDict
    return kind({"train": raw["train"], "validation": raw["validation"]})


def _hold_out(train, args: DataArguments, seed: int) -> dict:
    if args.streaming:  # no length to split by: hold out the first stories
        held = max(1, int(10_000 * args.validation_split_percentage / 100))
        return {"train": train.skip(held), "validation": train.take(held)}
    split = train.train_test_split(test_size=args.validation_split_percentage / 100, seed=seed)
    return {"train": split["train"], "validation": split["test"]}


def token_dtype(vocab_size: int) -> str:
    """The smallest unsigned integer type that holds every token id (uint16 for an 8K or 50K vocabulary)."""
    return next(name for name, top in (("uint16", 2**16), ("uint32", 2**32)) if vocab_size <= top)


def story_ids(tokenizer, texts) -> list[list[int]]:
    """Each story's tokens followed by <|endoftext|>, as the model reads stories in training and evaluation.
    Stories longer than the model's positions are expected here (they are packed into blocks, not truncated), so
    the tokenizer's warning about them is off."""
    ids = tokenizer(list(texts), add_special_tokens=False, verbose=False).input_ids
    return [row + [tokenizer.eos_token_id] for row in ids]


def pack(rows: Iterable[list[int]], block_size: int, keep_tail: bool = False) -> list[list[int]]:
    """The rows joined into one stream and cut into blocks of block_size; the last, shorter block is kept only
    with keep_tail (evaluation predicts every token; training wants full blocks)."""
    blocks = PackedStories.of_rows(rows, block_size, keep_tail)
    return [blocks.block(i).tolist() for i in range(len(blocks))]


class PackedStories:
    """Stories (rows of token ids, each ending with <|endoftext|>) joined into one stream and cut into blocks of
    block_size: block i is the stream's tokens [i * block_size, (i + 1) * block_size), read when asked for, so a
    corpus is held once, as one array of ids and the stories' offsets into it. The last, shorter block is kept
    only with keep_tail.

    With a seed it is a training dataset packed afresh at every epoch (`set_epoch`, from `RepackEachEpoch`):
    the stories in a new order, drawn from the seed and the epoch (epoch 0 keeps the dataset's order), joined and
    cut again. Blocks cut once would show every story at every epoch with the same neighbours, cut at the same
    places, and a run that repeats its data (the 30-minute recipe sees its stories about 5 times) would learn
    those blocks by heart; packed afresh, each story comes with other neighbours and is cut elsewhere. The number
    of blocks is the same at every epoch, and every process of a launcher draws the same order. The epoch told is
    kept in shared memory: data-loader workers hold copies of the dataset (persistent workers keep theirs from the
    first epoch on), and each copy reads the epoch from there and packs afresh when it changes."""

    def __init__(self, ids, offsets, block_size: int, keep_tail: bool = False, seed: int | None = None):
        import numpy as np
        import torch

        self.ids, self.starts = ids, np.asarray(offsets[:-1], dtype=np.int64)
        self.lengths = np.diff(np.asarray(offsets, dtype=np.int64))
        self.block_size, self.keep_tail, self.seed = block_size, keep_tail, seed
        self.tokens = int(self.lengths.sum())
        self.epoch = None
        self.told = torch.zeros((), dtype=torch.int64).share_memory_()  # the epoch, seen by every worker's copy
        self.set_epoch(0)

    @classmethod
    def of_rows(cls, rows: Iterable[list[int]], block_size: int, keep_tail: bool = False,
                seed: int | None = None) -> "PackedStories":
        import numpy as np

        rows = [np.asarray(row, dtype=np.int64) for row in rows]
        offsets = np.concatenate([[0], np.cumsum([len(row) for row in rows], dtype=np.int64)])
        return cls(np.concatenate(rows) if rows else np.zeros(0, np.int64), offsets, block_size, keep_tail, seed)

    @classmethod
    def of_dataset(cls, stories, block_size: int, seed: int | None = None) -> "PackedStories":
        """From a datasets.Dataset with one row of `input_ids` per story, read as one Arrow array (no Python lists:
        the whole TinyStories set is 470M tokens)."""
        import numpy as np

        column = stories.with_format("arrow")["input_ids"].combine_chunks()
        offsets = np.asarray(column.offsets)
        ids = np.asarray(column.values)[offsets[0]:offsets[-1]]
        return cls(ids, offsets - offsets[0], block_size, seed=seed)

    def set_epoch(self, epoch: int) -> None:
        self.told.fill_(epoch)
        self._arrange(epoch)

    def _arrange(self, epoch: int) -> None:
        """This copy's order and story ends for the epoch."""
        import numpy as np

        if epoch == self.epoch:
            return
        self.epoch = epoch
        stories = len(self.lengths)
        reorder = self.seed is not None and epoch > 0
        self.order = np.random.default_rng([self.seed, epoch]).permutation(stories) if reorder else np.arange(stories)
        self.ends = np.cumsum(self.lengths[self.order])  # where each story of this epoch's order ends in the stream

    def __len__(self) -> int:
        full, tail = divmod(self.tokens, self.block_size)
        return full + (1 if self.keep_tail and tail else 0)

    def block(self, i: int):
        """Block i of this epoch's stream (int64 ids)."""
        import numpy as np

        if not 0 <= i < len(self):
            raise IndexError(f"block {i} of {len(self)}")
        self._arrange(int(self.told))  # a data-loader worker's copy follows the epoch told to the dataset
        at, stop = i * self.block_size, min((i + 1) * self.block_size, self.tokens)
        k = int(np.searchsorted(self.ends, at, side="right"))  # the story that holds the block's first token
        pieces = []
        while at < stop:
            story = self.order[k]
            begins = self.ends[k] - self.lengths[story]  # where this story begins in the stream
            first, last = at - begins, min(self.lengths[story], stop - begins)
            pieces.append(self.ids[self.starts[story] + first:self.starts[story] + last])
            at, k = at + last - first, k + 1
        return np.concatenate(pieces).astype(np.int64)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.block(i)}


def tokenize_for_training(dataset, tokenizer, block_size: int, packing: bool = True, num_proc: int | None = None,
                          seed: int | None = None):
    """The training rows: `input_ids` only (labels are made by `CausalLMCollator`), stored in the smallest
    integer type that holds the vocabulary, in one pass with no intermediate dataset.

    Packing: stories joined with <|endoftext|> after each and cut into full blocks of block_size. A loaded
    dataset with a seed gives `PackedStories`, packed afresh at every epoch (training); without a seed, or
    streamed, the blocks are cut once (the tail of each 1,000-story batch is dropped). Otherwise one story per
    row, truncated to block_size."""
    import datasets

    streaming = not hasattr(dataset, "cache_files")
    per_epoch = packing and seed is not None and not streaming

    def tokenize(batch):
        ids = story_ids(tokenizer, batch["text"])
        if per_epoch:
            return {"input_ids": ids}
        return {"input_ids": pack(ids, block_size) if packing else [row[:block_size] for row in ids]}

    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value(token_dtype(len(tokenizer))))})
    desc = "tokenizing" + (" and packing" if packing and not per_epoch else "")
    kwargs = {} if streaming else {"num_proc": num_proc, "desc": desc}
    rows = dataset.map(tokenize, batched=True, batch_size=1000, remove_columns=["text"], features=features, **kwargs)
    return PackedStories.of_dataset(rows, block_size, seed) if per_epoch else rows


def story_positions(ids, eos_token_id: int):
    """Position ids that start again at 0 after every <|endoftext|>: ids (B, T) -> (B, T). Given to the model,
    they also keep each story's attention within the story (transformers' mask utilities read a restart of the
    positions as the start of another sequence), so a packed block is read as its stories would be read alone."""
    import torch

    T = ids.shape[-1]
    index = torch.arange(T, device=ids.device).expand_as(ids)  # (B, T)
    after_eos = torch.zeros_like(ids, dtype=torch.bool)
    after_eos[:, 1:] = ids[:, :-1] == eos_token_id
    starts = torch.where(after_eos, index, torch.zeros_like(index)).cummax(dim=-1).values  # each story's first index
    return index - starts


class CausalLMCollator:
    """Rows of token ids -> a batch with labels (the ids themselves; the model shifts them). Rows of unequal
    length (no packing) are padded with eos, masked out of the attention and of the loss. With stories_apart,
    packed blocks also get `story_positions`: each story attends only to itself, from position 0."""

    def __init__(self, pad_token_id: int, stories_apart: bool = False):
        self.pad_token_id, self.stories_apart = pad_token_id, stories_apart

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        width = max(len(row["input_ids"]) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row["input_ids"])] = torch.as_tensor(row["input_ids"], dtype=torch.long)
            mask[i, :len(row["input_ids"])] = 1
        if bool(mask.all()):  # packed blocks: causal attention (within each story, apart), every token a label
            batch = {"input_ids": ids, "labels": ids.clone()}
            if self.stories_apart:
                batch["position_ids"] = story_positions(ids, self.pad_token_id)
            return batch
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
