"""Command-line arguments through transformers' HfArgumentParser, with argparse's own answer to a wrong flag.

HfArgumentParser raises a ValueError (a traceback) for arguments no dataclass declares; a command-line user
should get what argparse gives: the usage line, `error: unrecognized arguments: ...` with the closest valid flag,
and exit status 2.
"""

import dataclasses
import difflib

from transformers import HfArgumentParser


def parse_arguments_or_exit(parser: HfArgumentParser, argv=None) -> tuple:
    *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        flags = [f"--{field.name}" for kind in parser.dataclass_types for field in dataclasses.fields(kind)]
        hints = [f"{arg} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(arg, flags, n=1)) else arg
                 for arg in unknown if arg.startswith("-")]
        parser.error(f"unrecognized arguments: {' '.join(unknown)}" + (f"; {', '.join(hints)}" if hints else ""))
    return tuple(parsed)
