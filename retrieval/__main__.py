"""``python -m retrieval``: the retrieve command."""

from retrieval.faces.cli import main

main()
