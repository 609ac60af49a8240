"""Index folders as the engine fills them: build-index (staged, resumable, swapped into place),
images committed a chunk at a time, sharded indexes, and the checks of a folder's health."""
