"""`python -m tinygpt ...` is the `tinygpt` command."""

import sys

from .cli import main

sys.exit(main())
