"""Typed errors of the ML side; the CLI turns each into a one-line message and an exit code."""

from __future__ import annotations

import importlib

from index import one_line


class RetrieveError(Exception):
    """Base of every error a user can cause and fix; its message is one line (control
    characters, as a newline in a file name, escaped)."""

    def __str__(self) -> str:
        return one_line(super().__str__())


class ModelError(RetrieveError):
    """A model name, weights file or model folder that cannot be used."""


class ModelMismatchError(RetrieveError):
    """An index queried or extended with another model than the one it was built with."""


class GalleryError(RetrieveError):
    """A gallery folder that is missing, empty or badly laid out."""


class ImageError(RetrieveError):
    """An image file that cannot be read or decoded."""


class InputError(RetrieveError):
    """A bad argument: a missing query path, an invalid label."""


class NotFoundError(InputError):
    """Nothing of that name: an unknown label, path or item (HTTP 404 in ``retrieve serve``)."""


def require_extra(module: str, *, extra: str, flag: str, what: str) -> None:
    """InputError naming ``flag`` unless ``module``, which the optional extra ``extra`` installs,
    can be imported."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise InputError(
            f"{flag} needs {what}, which is not installed: pip install 'retrieve[{extra}]'"
        ) from exc
