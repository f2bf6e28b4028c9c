"""Grad-CAM on hooks (batched), stuff masks from its maps, and the multi-label classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labelmill.models.gradcam import gradcam, maps_to_stuff_mask
from labelmill.models.multilabel_classifier import MultiLabelClassifier, imagenet_normalize, train_multilabel


class EvidenceNet(nn.Module):
    """features = ReLU(x) (3 channels, a stride-2 average pool: the Grad-CAM layer), then
    class 0 = mean(ch0) - mean(ch2), class 1 = mean(ch1): a CAM model with known maps."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Sequential(nn.ReLU(), nn.AvgPool2d(2))
        self.fc = nn.Linear(3, 2, bias=True)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]]))
            self.fc.bias.fill_(0.5)

    def forward(self, x):
        return self.fc(self.layer(x).mean(dim=(2, 3)))


def _evidence_image(h=32, w=32):
    img = torch.zeros(3, h, w)
    img[0, 8:16, 2:10] = 1.0  # class 0 evidence: a left patch
    img[1, 18:26, 20:30] = 1.0  # class 1 evidence: a right patch
    img[2, 0:8, 24:32] = 1.0  # evidence *against* class 0, top right
    return img


def _argmax(m):
    return tuple(int(v) for v in np.unravel_index(int(m.argmax()), m.shape))


def test_map_peaks_where_the_evidence_is():
    model = EvidenceNet()
    img = _evidence_image()
    (maps,) = gradcam(model, img[None], [[0, 1]], model.layer)
    assert maps.shape == (2, 32, 32)
    assert float(maps.min()) >= 0.0 and float(maps.max()) == pytest.approx(1.0)
    m0, m1 = maps
    assert _argmax(m0) in {(r, c) for r in range(8, 16) for c in range(2, 10)}
    assert _argmax(m1) in {(r, c) for r in range(18, 26) for c in range(20, 30)}
    assert float(m0[8:16, 2:10].mean()) > 0.8 and float(m0[18:, 18:].max()) < 1e-6
    assert float(m0[0:8, 24:32].max()) < 1e-6  # negative evidence removed by the ReLU
    assert float(m1[18:26, 20:30].mean()) > 0.8 and float(m1[:, :12].max()) < 1e-6


def test_map_equals_the_analytic_class_activation_map():
    # For features -> GAP -> linear, Grad-CAM is CAM: ReLU(sum_k w_ck A_k), up to a positive scale.
    model = EvidenceNet()
    img = torch.rand(3, 24, 40)
    (maps,) = gradcam(model, img[None], [[0]], model.layer)
    acts = model.layer(img[None])[0]
    cam = F.relu(acts[0] - acts[2])[None, None]
    cam = F.interpolate(cam, size=(24, 40), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(maps[0], cam / cam.max(), atol=1e-5, rtol=1e-5)


class TinyConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.body(x).mean(dim=(2, 3)))


def test_batched_equals_per_image_and_restores_train_mode():
    torch.manual_seed(0)
    model = TinyConvNet()
    model.body[1].running_mean.normal_()  # eval-mode BN is not the identity
    model.train()
    images = torch.randn(4, 3, 20, 24)
    classes = [[3, 0, 4], [], [2], [1, 1]]
    batched = gradcam(model, images, classes, model.body)
    assert model.training
    assert [tuple(m.shape) for m in batched] == [(3, 20, 24), (0, 20, 24), (1, 20, 24), (2, 20, 24)]
    for i, cs in enumerate(classes):
        for j, c in enumerate(cs):
            (single,) = gradcam(model, images[i : i + 1], [[c]], model.body)
            torch.testing.assert_close(batched[i][j], single[0], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(batched[0][0], batched[0][1])  # different classes, different maps
    torch.testing.assert_close(batched[3][0], batched[3][1])
    with pytest.raises(ValueError, match="class index 5 outside 0..4"):
        gradcam(model, images[:1], [[5]], model.body)


def test_stuff_mask_thresholds_and_takes_the_argmax():
    maps = np.zeros((2, 2, 3), np.float32)
    maps[0] = [[0.9, 0.4, 0.1], [0.6, 0.0, 0.35]]
    maps[1] = [[0.2, 0.8, 0.2], [0.7, 0.3, 0.3]]
    mask = maps_to_stuff_mask(maps, [4, 6], 0.3)
    assert mask.dtype == np.uint8
    assert mask.tolist() == [[4, 6, 255], [6, 255, 4]]  # 0.3 is not above 0.3
    assert maps_to_stuff_mask(torch.from_numpy(maps), [4, 6], 0.85).tolist() == [[4, 255, 255], [255, 255, 255]]
    assert (maps_to_stuff_mask(np.zeros((0, 2, 2)), [], 0.5) == 255).all()
    with pytest.raises(ValueError, match="2 maps for 1 tags"):
        maps_to_stuff_mask(maps, [4], 0.3)


def _tiny_multilabel_problem(n=24, size=64, seed=0):
    """tag 0: a red square somewhere; tag 1: horizontal blue stripes in the lower half."""
    rng = np.random.default_rng(seed)
    imgs = rng.uniform(0.3, 0.5, (n, 3, size, size)).astype(np.float32)
    targets = np.zeros((n, 2), np.float32)
    for i in range(n):
        t0, t1 = i % 2 == 0, (i // 2) % 2 == 0
        if t0:
            y, x = rng.integers(0, size // 2 - 16, 2)
            imgs[i, :, y : y + 16, x : x + 16] = np.array([1.0, 0.0, 0.0])[:, None, None]
        if t1:
            rows = np.arange(size // 2, size)
            imgs[i, 2, rows[(rows // 3) % 2 == 0], :] = 1.0
        targets[i] = [t0, t1]
    return imagenet_normalize(torch.from_numpy(imgs)), torch.from_numpy(targets)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    x, y = _tiny_multilabel_problem()
    model = MultiLabelClassifier(2, pretrained=True)  # random init (logged) without the weights package
    losses = train_multilabel(model, x, y, epochs=6, lr=1e-3, batch_size=8, seed=0)
    return model, x, y, losses


def test_classifier_training_loss_falls(trained):
    model, x, y, losses = trained
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0]
    assert not model.training
    with torch.no_grad():
        probs = model.probabilities(x)
    assert probs.shape == (24, 2)
    assert float(((probs > 0.5).float() == y).float().mean()) >= 0.9


def test_training_is_deterministic_for_a_seed():
    x, y = _tiny_multilabel_problem(n=8)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)  # same initial head; the training seed fixes the rest
        model = MultiLabelClassifier(2, pretrained=False)
        runs.append(train_multilabel(model, x, y, epochs=2, lr=1e-3, batch_size=4, seed=7))
    assert runs[0] == runs[1]


def test_gradcam_on_the_classifier_gives_maps_per_present_tag(trained):
    model, x, y, _ = trained
    classes = [[int(c) for c in torch.nonzero(t).flatten()] for t in y[:8]]
    assert [] in classes  # an image without tags gets no maps
    maps = gradcam(model, x[:8], classes, model.gradcam_layer)
    for m, cs in zip(maps, classes):
        assert m.shape == (len(cs), 64, 64)
        assert not cs or torch.isfinite(m).all() and float(m.min()) >= 0 and float(m.max()) <= 1
    # at stride 16 (block 10; the head's 2x2 map at 64x64 is too coarse to localise) the
    # square tag looks at the upper half and the stripes tag at the lower half, where they are
    maps = gradcam(model, x, [[int(c) for c in torch.nonzero(t).flatten()] for t in y], model.backbone._blocks[10])
    for tag, (where, elsewhere) in ((0, (slice(0, 32), slice(32, 64))), (1, (slice(32, 64), slice(0, 32)))):
        chosen = [m[int(torch.nonzero(t).flatten().tolist().index(tag))] for m, t in zip(maps, y) if t[tag] == 1]
        inside = np.mean([float(m[where].mean()) for m in chosen])
        outside = np.mean([float(m[elsewhere].mean()) for m in chosen])
        assert inside > 3 * outside, (tag, inside, outside)


def test_fallback_without_batched_gradients_gives_the_same_maps(monkeypatch):
    torch.manual_seed(1)
    model = TinyConvNet().eval()
    images = torch.randn(3, 3, 16, 16)
    classes = [[0, 2], [4], [1, 3]]
    batched = gradcam(model, images, classes, model.body)
    real_grad = torch.autograd.grad
    calls = []

    def no_vmap(*args, **kwargs):
        calls.append(kwargs.get("is_grads_batched", False))
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("no batching rule")
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_vmap)
    looped = gradcam(model, images, classes, model.body)
    assert calls == [True, False, False]  # tried vmap once, then one backward per slot
    for a, b in zip(batched, looped):
        torch.testing.assert_close(a, b)
