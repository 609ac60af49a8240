"""``python -m retrieval``: the retrieve command."""

from retrieval.cli import main

main()
