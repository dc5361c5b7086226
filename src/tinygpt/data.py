"""Reading TinyStories text: the original .txt format (each story followed by a line `<|endoftext|>`).

Every problem with an input file (missing, empty, not UTF-8) is reported with the file's name and,
where it helps, the line, instead of a traceback from deep inside a tokenizer or a dataset builder.
"""

from collections.abc import Iterable, Iterator
from pathlib import Path

STORY_SEPARATOR = "<|endoftext|>"


class DataFileError(ValueError):
    """A data file that cannot be used; the message names the file and the problem."""


def read_text_file(path) -> str:
    """The whole file as text, or a DataFileError naming the file and what is wrong with it."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: no such file")
    if not path.is_file():
        raise DataFileError(f"{path}: not a file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataFileError(f"{path}: not valid UTF-8 at line {line} (byte {error.start}: "
                            f"{raw[error.start:error.start + 1]!r}); re-encode the file as UTF-8") from None
    if not text.strip():
        raise DataFileError(f"{path}: the file is empty")
    return text


def split_stories(text: str) -> list[str]:
    """Stories of a TinyStories .txt file; a file without separators is one story."""
    stories = []
    for chunk in text.split(STORY_SEPARATOR):
        story = chunk.strip()
        if story:
            stories.append(story)
    return stories


def read_stories(path) -> list[str]:
    stories = split_stories(read_text_file(path))
    if not stories:
        raise DataFileError(f"{path}: holds no stories, only separators")
    return stories


def iter_stories(files: Iterable) -> Iterator[str]:
    """Stories of several .txt files in order; every file is checked before any story is yielded."""
    files = [Path(f) for f in ([files] if isinstance(files, (str, Path)) else files)]
    if not files:
        raise DataFileError("no data files given")
    for path in files:
        if not path.is_file():
            raise DataFileError(f"{path}: no such file")
    for path in files:
        yield from read_stories(path)
