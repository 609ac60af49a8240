"""EmbeddingNet, model folders and the Embedder on a tiny backbone."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.config import ModelSpec
from retrieval.engine.images import load_rgb
from retrieval.errors import ModelError
from retrieval.nets.model import fingerprint, load_from_source, load_model, save_model_dir

from .helpers import write_image


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def test_unit_rows_and_dim(tiny):
    with torch.no_grad():
        out = tiny.net(torch.randn(3, 3, 64, 64))
    assert out.shape == (3, 64)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)


def test_head_sets_dim():
    m = load_model("tiny", spec=ModelSpec(dim=16, pooling="avg"))
    assert m.net.dim == 16
    with torch.no_grad():
        assert m.net(torch.randn(2, 3, 64, 64)).shape == (2, 16)


def test_fingerprint_stable_and_sensitive(tiny):
    assert load_model("tiny").fingerprint == tiny.fingerprint
    assert load_model("tiny", spec=ModelSpec(pooling="avg")).fingerprint != tiny.fingerprint


def test_model_dir_round_trip(tmp_path: Path):
    m = load_model("tiny", spec=ModelSpec(dim=8))
    with torch.no_grad():
        m.net.head.bias.fill_(0.25)
    save_model_dir(m.net, tmp_path / "m")
    again = load_model(str(tmp_path / "m"))
    assert again.net.spec == m.net.spec
    assert again.fingerprint == fingerprint(m.net) != m.fingerprint
    assert load_from_source(again.source).fingerprint == again.fingerprint
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(again.net(x), m.net(x))


def test_model_dir_errors(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="model.pt"):
        load_model(str(tmp_path / "empty"))
    m = load_model("tiny", spec=ModelSpec(dim=8))
    save_model_dir(m.net, tmp_path / "m")
    payload = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    payload["spec"]["dim"] = 9
    torch.save(payload, tmp_path / "m" / "model.pt")
    with pytest.raises(ModelError, match="do not match the model config"):
        load_model(str(tmp_path / "m"))


def test_embed_paths_skips_bad_files(tiny, tmp_path: Path):
    good = [write_image(tmp_path / f"{i}.png", (200, 10 * i, 10), i) for i in range(5)]
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "text.jpg"
    text.write_text("not a jpeg")
    paths = [good[0], empty, *good[1:3], text, *good[3:]]
    emb = tiny.embedder(batch_size=2, num_workers=0)
    seen = []
    res = emb.embed_paths(paths, progress=seen.append)
    assert res.ok == [0, 2, 3, 5, 6]
    assert [p for p, _ in res.failures] == [str(empty), str(text)]
    assert sum(seen) == len(paths)
    assert res.vectors.dtype == np.float32 and res.vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(res.vectors, axis=1), 1.0, atol=1e-5)


def test_workers_match_in_process(tiny, tmp_path: Path):
    paths = [write_image(tmp_path / f"{i}.png", (i * 5, 100, 50), i) for i in range(12)]
    a = tiny.embedder(batch_size=4, num_workers=0).embed_paths(paths)
    b = tiny.embedder(batch_size=4, num_workers=2).embed_paths(paths)
    assert a.ok == b.ok == list(range(12))
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-6)


def test_flip_averaging_makes_mirror_images_equal():
    m = load_model("tiny", spec=ModelSpec(flip=True))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = m.net(x), m.net(x.flip(3))
    assert torch.allclose(a, b, atol=1e-5)
    plain = load_model("tiny").net
    with torch.no_grad():
        assert not torch.allclose(plain(x), plain(x.flip(3)), atol=1e-3)
    assert m.fingerprint != load_model("tiny").fingerprint


def test_attention_map_is_retrievable_after_forward():
    m = load_model("tiny", spec=ModelSpec(attention=True))
    assert m.net.attention_map is None
    with torch.no_grad():
        m.net(torch.randn(3, 3, 64, 64))
    amap = m.net.attention_map
    assert amap is not None and amap.shape == (3, 1, 8, 8)
    assert float(amap.min()) > 0.0 and float(amap.max()) < 1.0
    assert load_model("tiny").net.attention_map is None


def test_a_mirrored_embedding_is_what_a_flip_network_returns(tmp_path: Path):
    """One call of a one-pass network on a batch and its mirror images gives each image's vector
    as it is and its mirror average, equal to a --flip network's embedding of the image."""
    paths = [
        write_image(tmp_path / f"{i}.png", (200, 20 * i, 90), i, size=40 + 9 * i) for i in range(5)
    ]
    paths.insert(2, tmp_path / "missing.png")
    one = load_model("tiny")
    two = load_model("tiny")
    two.net.spec = replace(two.net.spec, flip=True)
    asked = one.embedder(batch_size=2, num_workers=0).embed_paths(paths, mirror=True)
    plain = one.embedder(batch_size=2, num_workers=0).embed_paths(paths)
    flipped = two.embedder(batch_size=2, num_workers=0).embed_paths(paths)
    assert asked.ok == plain.ok == flipped.ok == [0, 1, 3, 4, 5]
    assert plain.mirrored is None and asked.mirrored is not None
    np.testing.assert_allclose(asked.vectors, plain.vectors, atol=1e-6)
    np.testing.assert_allclose(asked.mirrored, flipped.vectors, atol=1e-5)
    assert np.abs(asked.mirrored - asked.vectors).max() > 1e-3  # the mirror changes something
    images = [load_rgb(p) for p in paths if p.exists()]
    vectors, averaged = one.embedder(batch_size=3).embed_images_mirrored(images)
    np.testing.assert_allclose(vectors, plain.vectors, atol=1e-5)
    np.testing.assert_allclose(averaged, flipped.vectors, atol=1e-5)
    same, again = one.embedder().embed_images_mirrored(images, mirror=False)
    assert again is same
