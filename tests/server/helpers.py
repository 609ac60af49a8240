"""Helpers of the server tests: a tiny index, and the real server on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from retrieval.faces.server import create_app
from retrieval.indexing.build import build_index

from ..helpers import COLORS, write_image


def build_tiny_index(root: Path) -> Path:
    """Three colour classes x 4 images under ``root/gallery``, indexed with the tiny model into
    ``root/index``; returns the index folder."""
    for ci, (label, color) in enumerate(COLORS.items()):
        for j in range(4):
            write_image(root / "gallery" / label / f"{j}.png", color, seed=ci * 10 + j)
    build_index(root / "gallery", root / "index", model="tiny")
    return root / "index"


def copy_index(index: Path, dest: Path) -> Path:
    """A copy of an index folder, for a test that changes it."""
    shutil.copytree(index, dest)
    return dest


@contextmanager
def running(index: Path, **options: float) -> Iterator[str]:
    """``create_app(index, **options)`` served by uvicorn in a thread on a free loopback port;
    yields its base URL and stops it afterwards."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(index, **options), log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
