"""Publish a trained TinyGPT folder to the Hugging Face Hub, with its code, tokenizer and a model card.

Build the repository folder and list what would be uploaded (no network):

    python push_to_hub.py --model runs/cpu --repo-id USER/tinystories-cpu --dry-run --local-dir hub/tinystories-cpu

Upload it (token from HF_TOKEN or `hf auth login`; the repository is created if missing):

    python push_to_hub.py --model runs/cpu --repo-id USER/tinystories-cpu [--private] [--revision BRANCH] \
        [--commit-message "..."]
"""

import sys

from transformers import HfArgumentParser

import tinygpt  # noqa: F401  (registers TinyGPT with the Auto classes)
from tinygpt.arguments import parse_arguments_or_exit
from tinygpt.hub import PublishArguments, PublishError, publish


def main() -> int:
    (args,) = parse_arguments_or_exit(HfArgumentParser(PublishArguments))
    try:
        publish(args)
    except (PublishError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
