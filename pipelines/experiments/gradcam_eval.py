"""Stuff masks from image tags on the synthetic segmentation corpus: Grad-CAM vs a whole-image baseline.

``evaluate_gradcam_stuff(...)`` writes a synthetic corpus, trains the multi-label classifier on
its per-image ``tags``, runs Grad-CAM for every present tag, thresholds the maps into stuff
masks and scores them against the GT sem masks on stuff pixels only (thing pixels are
"ignore"). The baseline gives every pixel the present tag the classifier scores highest (an
image with one tag is then exactly right); it labels every pixel. Both are given the GT tags
of the image, as the pipeline is. ``main(argv)`` (``python -m labelmill.pipelines.experiments.gradcam_eval WORK_DIR``) runs the numbers
quoted in docs/segmentation.md ("Stuff from tags").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import cv2
import numpy as np
import torch

from labelmill.infra import storage
from labelmill.models.efficientnet_lite import imagenet_normalize
from labelmill.models.gradcam import gradcam, maps_to_stuff_mask
from labelmill.models.multilabel_classifier import MultiLabelClassifier, train_multilabel
from labelmill.models.segmentation_metrics import SemanticAccumulator
from labelmill.operators.synth.segmentation import SegmentationSynthConfig, write_segmentation_corpus

__all__ = ["evaluate_gradcam_stuff", "main"]


def _read_corpus(out_dir: str) -> tuple[np.ndarray, np.ndarray, list[list[str]], dict[str, int], int]:
    doc = json.loads(storage.read_text(storage.join(out_dir, "annotations.json")))
    stuff = {c["name"]: c["id"] for c in doc["categories"] if not c["isthing"]}
    num_classes = max(c["id"] for c in doc["categories"]) + 1
    images, sems, tags = [], [], []
    for rec in sorted(doc["images"], key=lambda r: r["id"]):
        stem = rec["file_name"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
        jpg = np.frombuffer(storage.read_bytes(storage.join(out_dir, "images", f"{stem}.jpg")), np.uint8)
        png = np.frombuffer(storage.read_bytes(storage.join(out_dir, "gt", f"{stem}_sem.png")), np.uint8)
        images.append(cv2.cvtColor(cv2.imdecode(jpg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
        sems.append(cv2.imdecode(png, cv2.IMREAD_UNCHANGED))
        tags.append(list(rec["tags"]))
    return np.stack(images), np.stack(sems), tags, stuff, num_classes


def evaluate_gradcam_stuff(
    out_dir: str,
    *,
    num_images: int = 60,
    holdout: int = 60,
    width: int = 160,
    height: int = 128,
    epochs: int = 8,
    lr: float = 5e-4,
    batch_size: int = 12,
    seed: int = 0,
    thresholds: tuple[float, ...] = (-1.0, 0.2, 0.3, 0.5),
    layers: tuple[str, ...] = ("head", "block10"),
    pretrained: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Numbers of the Grad-CAM stuff masks (module docstring). ``layers``: "head" = the last
    feature map (stride 32), "block10" = the output of block 10 (stride 16). A threshold < 0
    labels every pixel (argmax of the maps). The classifier trains on the first ``num_images``
    images; "corpus" scores those (the pipeline labels the corpus it trained on), "holdout"
    the next ``holdout`` images of the same generator, which it never saw."""
    cfg = SegmentationSynthConfig(num_images=num_images + holdout, width=width, height=height, seed=seed)
    write_segmentation_corpus(out_dir, cfg)
    rgb, sems, tags, stuff, num_classes = _read_corpus(out_dir)
    names = sorted(stuff, key=stuff.get)
    tag_index = {n: i for i, n in enumerate(names)}
    ids = np.array([stuff[n] for n in names])
    x = imagenet_normalize(torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0)
    y = torch.zeros(len(tags), len(names))
    for i, ts in enumerate(tags):
        y[i, [tag_index[t] for t in ts]] = 1.0
    gt = np.where(np.isin(sems, ids), sems, 255).astype(np.uint8)  # stuff pixels only

    model = MultiLabelClassifier(len(names), pretrained=pretrained)
    t0 = time.perf_counter()
    losses = train_multilabel(model, x[:num_images], y[:num_images], epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device)
    train_s = time.perf_counter() - t0
    result: dict[str, Any] = {
        "images": num_images, "holdout_images": holdout, "input": [height, width], "epochs": epochs,
        "losses": losses, "train_seconds": train_s,
        "corpus": _score(model, x[:num_images], y[:num_images], tags[:num_images], gt[:num_images],
                         tag_index, ids, num_classes, thresholds, layers, device),
    }
    if holdout:
        result["holdout"] = _score(model, x[num_images:], y[num_images:], tags[num_images:], gt[num_images:],
                                   tag_index, ids, num_classes, thresholds, layers, device)
    return result


def _score(model, x, y, tags, gt, tag_index, ids, num_classes, thresholds, layers, device) -> dict[str, Any]:
    """Baseline and Grad-CAM scores of the images ``x`` (GT tags ``tags``, stuff-only GT ``gt``)."""
    model.eval()
    with torch.no_grad():
        probs = torch.cat([model.probabilities(x[s : s + 16].to(device)).cpu() for s in range(0, len(x), 16)])
    tag_accuracy = float(((probs > 0.5).float() == y).float().mean())

    baseline = SemanticAccumulator(num_classes=num_classes)
    for i, ts in enumerate(tags):
        present = [tag_index[t] for t in ts]
        best = max(present, key=lambda k: float(probs[i, k]))
        pred = np.full(gt.shape[1:], ids[best], np.uint8)
        baseline.add(pred, gt[i])
    result: dict[str, Any] = {"tag_accuracy": tag_accuracy, "baseline": _summary(baseline.result()), "gradcam": {}}
    layer_modules = {"head": model.gradcam_layer, "block10": model.backbone._blocks[10]}
    for layer_name in layers:
        layer = layer_modules[layer_name]
        accs = {t: SemanticAccumulator(num_classes=num_classes) for t in thresholds}
        seconds = 0.0
        for s in range(0, len(x), 16):
            batch = x[s : s + 16].to(device)
            classes = [[tag_index[t] for t in ts] for ts in tags[s : s + 16]]
            t1 = time.perf_counter()
            maps = gradcam(model, batch, classes, layer)
            if device != "cpu":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - t1
            for k, (m, cs) in enumerate(zip(maps, classes)):
                for t in thresholds:
                    accs[t].add(maps_to_stuff_mask(m, [int(ids[c]) for c in cs], t), gt[s + k])
        result["gradcam"][layer_name] = {
            "images_per_second": len(x) / seconds,
            "by_threshold": {str(t): _summary(a.result()) for t, a in accs.items()},
        }
    return result


def _summary(scores: dict[str, Any]) -> dict[str, float]:
    return {k: float(scores[k]) for k in ("miou", "pixel_accuracy", "labelled_fraction")}


def main(argv: list[str] | None = None) -> int:
    """``python -m labelmill.pipelines.experiments.gradcam_eval WORK_DIR``: the measurement, as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", help="where the synthetic corpus is written (reused when present)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sys.stdout.write(json.dumps(evaluate_gradcam_stuff(args.work_dir), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
