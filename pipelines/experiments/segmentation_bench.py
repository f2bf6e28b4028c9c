"""`labelmill bench segmentation`: speed of the segmentation cues, side by side in one run.

Method (docs/benchmarks.md, "Segmentation"):

1. **Corpus, in memory.** ``synthesize_segmentation_image(i, SegmentationSynthConfig(...))`` for
   ``i < images`` (the generator behind ``labelmill synth segmentation``, no files written):
   the image (BGR for OpenCV, RGB for torch), its thing boxes (the tight box of each visible
   instance, COCO ``[x, y, w, h]``) with their class ids, its stuff tags (the stuff classes
   present) and its GT sem mask. ``C`` = the corpus's class count (ids ``0 .. T + S``).
2. **Figures** (rates over the whole corpus; each measured ``repeats`` times):

   * boxes/s (CPU, OpenCV): ``grabcut`` (:func:`grabcut_box`), ``colour_ratio`` and ``superpixel``
     (:func:`colour_ratio_box`, :func:`superpixel_box`): one cue alone per box, crop included;
     ``box_labels``: the production path (both cues + combine + paint,
     :func:`box_labels_batch` with ``workers=1``) and ``box_labels_parallel`` (``workers=N``).
   * images/s per torch device: ``gradcam_head`` and ``gradcam_block10`` (:func:`gradcam` of a
     :class:`MultiLabelClassifier` on the pretrained EfficientNet-Lite0, untrained head, at the
     last feature map / block 10, batches of ``batch_size``, each image's present tags);
     ``crf_palette`` (:func:`refine_labels`, default :class:`DenseCRFConfig`, ``C`` classes, at the
     corpus size, ``crf_batch_size`` images per call); ``crf_palette_small`` and
     ``crf_direct_small``: the palette and the exact kind on the images resized to
     ``direct_size`` (the direct kind is O(N^2) and refuses large images).
     Inputs are on the device before the clock starts; on CUDA the clock stops after
     ``torch.cuda.synchronize()``. The CRF's labels: the box pseudo-labels (things, 255 where the
     cues disagree) over the GT stuff (standing in for the Grad-CAM stuff masks).
3. **Warm-up, then interleaved repeats.** Every figure runs once on a small piece untimed (lazy
   initialisation, allocator, CUDA kernels); then each repeat measures every figure in turn, so a
   change of machine load hits all alike. Reported: median, min and max over the repeats, and
   ratios (``ratios``) computed per repeat from figures measured in that same repeat, then the
   median: ``box_labels_parallel / box_labels`` (the thread speed-up), ``box_labels / grabcut``,
   ``gradcam_block10 / gradcam_head``, ``crf_palette_small / crf_direct_small`` and, with both
   devices, ``cuda / cpu`` of each torch figure.

``--threads`` sets torch's intra-op threads and OpenCV's threads for the run (restored after).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable

from labelmill.pipelines.experiments.machine import cpu_model

log = logging.getLogger(__name__)

__all__ = [
    "SegmentationBenchConfig",
    "BOX_FIGURES",
    "TORCH_FIGURES",
    "bench_segmentation",
    "check_devices",
    "format_report",
    "ratios",
    "register_segmentation_bench",
]

BOX_FIGURES = ("grabcut", "colour_ratio", "superpixel", "box_labels", "box_labels_parallel")
TORCH_FIGURES = ("gradcam_head", "gradcam_block10", "crf_palette", "crf_palette_small", "crf_direct_small")
_SECOND_CUES = ("colour_ratio", "superpixel")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SegmentationBenchConfig:
    """Knobs of :func:`bench_segmentation` (module docstring)."""

    images: int = 24  # synthetic images
    width: int = 320  # image size in pixels
    height: int = 240
    seed: int = 0  # synthetic world seed
    devices: tuple[str, ...] = ("cpu",)  # torch devices of the Grad-CAM and CRF figures ("cpu", "cuda", "cuda:1")
    threads: int = 1  # torch intra-op threads and OpenCV threads
    workers: int = 2  # box_labels_batch threads of box_labels_parallel (1: no parallel figure)
    repeats: int = 3  # measurements per figure; median, min and max reported
    batch_size: int = 8  # images per Grad-CAM call
    crf_batch_size: int = 1  # images per refine_labels call
    second_cue: str = "colour_ratio"  # the second cue of box_labels
    crf_confidence: float = 0.7  # refine_labels confidence of a labelled pixel
    direct_size: tuple[int, int] = (40, 30)  # (width, height) of the direct-vs-palette CRF figures

    def __post_init__(self) -> None:
        for name in ("images", "threads", "workers", "repeats", "batch_size", "crf_batch_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"'{name}' must be an integer >= 1, got {value!r}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if not _is_int(value) or not 16 <= value <= 8192:
                raise ValueError(f"'{name}' must be an integer in 16..8192, got {value!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"'seed' must be an integer >= 0, got {self.seed!r}")
        if self.second_cue not in _SECOND_CUES:
            raise ValueError(f"'second_cue' must be one of {', '.join(_SECOND_CUES)}, got {self.second_cue!r}")
        if not isinstance(self.devices, tuple) or not self.devices:
            raise ValueError(f"'devices' must be a non-empty tuple of torch devices, got {self.devices!r}")
        for device in self.devices:
            if not isinstance(device, str) or not (device == "cpu" or device == "cuda"
                                                   or (device.startswith("cuda:") and device[5:].isdigit())):
                raise ValueError(f"'devices' must hold cpu, cuda or cuda:N, got {device!r}")
        if len(set(self.devices)) != len(self.devices):
            raise ValueError(f"'devices' names a device twice: {', '.join(self.devices)}")
        if not (isinstance(self.crf_confidence, float) and 0.0 < self.crf_confidence < 1.0):
            raise ValueError(f"'crf_confidence' must be a float in (0, 1), got {self.crf_confidence!r}")
        if (len(self.direct_size) != 2 or not all(_is_int(v) and v >= 2 for v in self.direct_size)
                or self.direct_size[0] * self.direct_size[1] > 4096):
            raise ValueError(f"'direct_size' must be (width, height) >= 2 with at most 4096 pixels, "
                             f"got {self.direct_size!r}")


# ----------------------------------------------------------------------------- the corpus


@dataclass
class _Corpus:
    bgr: list  # (H, W, 3) uint8 per image
    rgb: list
    boxes: list  # per image: list of [x, y, w, h]
    classes: list  # per image: list of thing category ids
    tags: list  # per image: tag indices 0..S-1 of the stuff classes present
    sem: list  # per image: (H, W) uint8 GT category ids
    num_classes: int  # C: ids 0 .. T + S
    num_tags: int  # S

    @property
    def num_boxes(self) -> int:
        return sum(len(b) for b in self.boxes)


def _make_corpus(bench: SegmentationBenchConfig) -> _Corpus:
    import cv2
    import numpy as np

    from labelmill.operators.synth.segmentation import SegmentationSynthConfig, synthesize_segmentation_image

    synth = SegmentationSynthConfig(num_images=bench.images, width=bench.width, height=bench.height, seed=bench.seed)
    first_stuff = synth.stuff_category_id(0)
    corpus = _Corpus([], [], [], [], [], [], num_classes=1 + len(synth.thing_classes) + len(synth.stuff_classes),
                     num_tags=len(synth.stuff_classes))
    for index in range(bench.images):
        sample = synthesize_segmentation_image(index, synth)
        boxes, classes = [], []
        for thing in sample.things:
            ys, xs = np.nonzero(sample.inst == thing["instance_id"])
            x0, y0 = int(xs.min()), int(ys.min())
            boxes.append([x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1])
            classes.append(int(thing["category_id"]))
        present = sorted({int(c) for c in sample.stuff_category_ids if (sample.sem == c).any()})
        corpus.rgb.append(sample.image)
        corpus.bgr.append(cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
        corpus.boxes.append(boxes)
        corpus.classes.append(classes)
        corpus.tags.append([c - first_stuff for c in present])
        corpus.sem.append(sample.sem)
    return corpus


# ----------------------------------------------------------------------------- measures


@dataclass
class _Measure:
    name: str
    device: str
    unit: str  # "boxes/s" | "images/s"
    items: int  # boxes or images per run
    run: Callable[[], None]  # one run over every item
    warmup: Callable[[], None]  # a small untimed piece
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: list[float] = dataclasses.field(default_factory=list)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def _box_measures(corpus: _Corpus, bench: SegmentationBenchConfig) -> list[_Measure]:
    from labelmill.operators.segmentation.box_labels import (
        BoxLabelConfig,
        box_labels_batch,
        colour_ratio_box,
        grabcut_box,
        superpixel_box,
    )

    config = BoxLabelConfig(second_cue=bench.second_cue)
    pairs = [(image, box) for image, boxes in zip(corpus.bgr, corpus.boxes) for box in boxes]
    samples = list(zip(corpus.bgr, corpus.boxes, corpus.classes))
    cues: dict[str, Callable[..., Any]] = {
        "grabcut": lambda image, box: grabcut_box(image, box, iterations=config.iterations, max_side=config.max_side,
                                                  margin=config.margin, margin_px=config.margin_px, seed=config.seed),
        "colour_ratio": lambda image, box: colour_ratio_box(image, box, config=config),
        "superpixel": lambda image, box: superpixel_box(image, box, config=config),
    }

    def per_box(cue: Callable[..., Any], chosen: list) -> Callable[[], None]:
        def run() -> None:
            for image, box in chosen:
                cue(image, box)

        return run

    def batch(workers: int, chosen: list) -> Callable[[], None]:
        def run() -> None:
            box_labels_batch(chosen, config=config, workers=workers)

        return run

    n = corpus.num_boxes
    out = [_Measure(name, "cpu", "boxes/s", n, per_box(cue, pairs), per_box(cue, pairs[:1]))
           for name, cue in cues.items()]
    out.append(_Measure("box_labels", "cpu", "boxes/s", n, batch(1, samples), batch(1, samples[:1]),
                        extra={"workers": 1, "second_cue": bench.second_cue}))
    if bench.workers > 1:
        out.append(_Measure("box_labels_parallel", "cpu", "boxes/s", n, batch(bench.workers, samples),
                            batch(bench.workers, samples[: bench.workers]),
                            extra={"workers": bench.workers, "second_cue": bench.second_cue}))
    return out


def _crf_labels(corpus: _Corpus, bench: SegmentationBenchConfig) -> list:
    """Box pseudo-labels (things; 255 where the cues disagree) over the GT stuff, per image."""
    import numpy as np

    from labelmill.operators.segmentation.box_labels import BoxLabelConfig, box_labels_batch

    results = box_labels_batch(list(zip(corpus.bgr, corpus.boxes, corpus.classes)),
                               config=BoxLabelConfig(second_cue=bench.second_cue), workers=bench.workers)
    return [np.where(box_sem == 0, gt, box_sem).astype(np.uint8) for (box_sem, _, _), gt in zip(results, corpus.sem)]


def _torch_measures(corpus: _Corpus, bench: SegmentationBenchConfig, device: str, model: Any,
                    labels: list) -> list[_Measure]:
    import cv2
    import numpy as np
    import torch

    from labelmill.models.dense_crf import DenseCRFConfig, refine_labels
    from labelmill.models.efficientnet_lite import imagenet_normalize
    from labelmill.models.gradcam import gradcam

    model = copy.deepcopy(model).to(device).eval()  # one copy per device: the closures keep theirs
    n = len(corpus.rgb)
    rgb = torch.from_numpy(np.stack(corpus.rgb)).permute(0, 3, 1, 2).contiguous()
    x = imagenet_normalize(rgb.float().div(255.0)).to(device)
    layers = {"gradcam_head": model.gradcam_layer, "gradcam_block10": model.layer("block10")}
    gradcam_batches = [(x[s : s + bench.batch_size], corpus.tags[s : s + bench.batch_size])
                       for s in range(0, n, bench.batch_size)]

    def run_gradcam(layer: Any, batches: list) -> Callable[[], None]:
        def run() -> None:
            for images, tags in batches:
                gradcam(model, images, tags, layer)
            _sync(device)

        return run

    crf = DenseCRFConfig()
    if crf.approximation != "palette":
        raise RuntimeError(f"DenseCRFConfig's default approximation is {crf.approximation!r}, not 'palette'")
    direct = dataclasses.replace(crf, approximation="direct")
    dw, dh = min(bench.direct_size[0], bench.width), min(bench.direct_size[1], bench.height)
    small_rgb = [cv2.resize(im, (dw, dh), interpolation=cv2.INTER_AREA) for im in corpus.rgb]
    small_labels = [cv2.resize(lb, (dw, dh), interpolation=cv2.INTER_NEAREST) for lb in labels]

    def crf_batches(images: list, sems: list) -> list:
        img = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().to(device)
        sem = torch.from_numpy(np.stack(sems)).to(device)
        step = bench.crf_batch_size
        return [(sem[s : s + step], img[s : s + step]) for s in range(0, len(images), step)]

    def run_crf(config: Any, batches: list) -> Callable[[], None]:
        def run() -> None:
            for sem, img in batches:
                refine_labels(sem, img, num_classes=corpus.num_classes, confidence=bench.crf_confidence, config=config)
            _sync(device)

        return run

    full, small = crf_batches(corpus.rgb, labels), crf_batches(small_rgb, small_labels)
    crf_extra = {"classes": corpus.num_classes, "batch_size": bench.crf_batch_size}
    out = [_Measure(name, device, "images/s", n, run_gradcam(layer, gradcam_batches),
                    run_gradcam(layer, gradcam_batches[:1]), extra={"batch_size": bench.batch_size})
           for name, layer in layers.items()]
    out += [
        _Measure("crf_palette", device, "images/s", n, run_crf(crf, full), run_crf(crf, full[:1]),
                 extra={**crf_extra, "size": [bench.width, bench.height]}),
        _Measure("crf_palette_small", device, "images/s", n, run_crf(crf, small), run_crf(crf, small[:1]),
                 extra={**crf_extra, "size": [dw, dh]}),
        _Measure("crf_direct_small", device, "images/s", n, run_crf(direct, small), run_crf(direct, small[:1]),
                 extra={**crf_extra, "size": [dw, dh]}),
    ]
    return out


# ----------------------------------------------------------------------------- report


def _machine(devices: tuple[str, ...]) -> dict[str, Any]:
    import cv2
    import torch

    model = cpu_model()
    usable = None
    with contextlib.suppress(AttributeError, OSError):
        usable = len(os.sched_getaffinity(0))
    versions = {"torch": torch.__version__, "opencv": cv2.__version__, "python": platform.python_version()}
    with contextlib.suppress(metadata.PackageNotFoundError):
        versions["numpy"] = metadata.version("numpy")
    out: dict[str, Any] = {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "cpus_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "opencv_threads": cv2.getNumThreads(),
        "platform": platform.platform(),
        "versions": versions,
    }
    cuda = [d for d in devices if d.startswith("cuda")]
    if cuda:
        out["cuda"] = {d: torch.cuda.get_device_name(d) for d in cuda}
        out["versions"]["cuda"] = torch.version.cuda
    return out


def _load_1m() -> float | None:
    with contextlib.suppress(OSError, AttributeError):
        return round(os.getloadavg()[0], 2)
    return None


def _figure(measure: _Measure) -> dict[str, Any]:
    rates = [measure.items / s if s > 0 else math.inf for s in measure.seconds]
    return {"unit": measure.unit, "items": measure.items, "median": statistics.median(rates), "min": min(rates),
            "max": max(rates), "values": rates, "seconds": measure.seconds, **measure.extra}


def _ratio(top: dict[str, Any], bottom: dict[str, Any]) -> dict[str, Any]:
    """Median, min and max over repeats of ``top``'s rate / ``bottom``'s rate in the same repeat."""
    per_repeat = [a / b for a, b in zip(top["values"], bottom["values"])]
    return {"median": statistics.median(per_repeat), "min": min(per_repeat), "max": max(per_repeat)}


def ratios(figures: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """``{device: {"top/bottom": ratio}}`` of the figure pairs of the module docstring, and
    ``{"cuda…/cpu": {name: ratio}}`` of each torch figure measured on both devices."""
    pairs = (("box_labels_parallel", "box_labels"), ("box_labels", "grabcut"),
             ("gradcam_block10", "gradcam_head"), ("crf_palette_small", "crf_direct_small"))
    out: dict[str, Any] = {}
    for device, figs in figures.items():
        for top, bottom in pairs:
            if top in figs and bottom in figs:
                out.setdefault(device, {})[f"{top}/{bottom}"] = _ratio(figs[top], figs[bottom])
    cpu = figures.get("cpu", {})
    for device, figs in figures.items():
        if device.startswith("cuda"):
            for name in TORCH_FIGURES:
                if name in figs and name in cpu:
                    out.setdefault(f"{device}/cpu", {})[name] = _ratio(figs[name], cpu[name])
    return out


# ----------------------------------------------------------------------------- the bench


@contextlib.contextmanager
def _threads(count: int):
    import cv2
    import torch

    before = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(count)
    cv2.setNumThreads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


def check_devices(devices: tuple[str, ...]) -> None:
    """``ValueError`` naming a CUDA device that torch cannot use."""
    import torch

    for device in devices:
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ValueError(f"device {device!r}: torch {torch.__version__} sees no CUDA device")
            index = int(device[5:]) if ":" in device else 0
            if index >= torch.cuda.device_count():
                raise ValueError(f"device {device!r}: torch sees only {torch.cuda.device_count()} CUDA device(s)")


def bench_segmentation(bench: SegmentationBenchConfig = SegmentationBenchConfig()) -> dict[str, Any]:
    """Measure every figure of the module docstring; returns the JSON-ready report.

    Keys: ``corpus`` (images, width, height, seed, boxes, classes, tags per image), ``settings``,
    ``figures`` (``{device: {name: {unit, items, median, min, max, values, seconds, ...}}}``;
    the box figures are under ``cpu``), ``ratios``, ``machine``, ``load_1m`` (before, after) and
    ``date_utc``. A CUDA device that torch cannot use raises ``ValueError``.
    """
    import torch

    check_devices(bench.devices)
    from labelmill.models.dense_crf import DenseCRFConfig
    from labelmill.models.multilabel_classifier import MultiLabelClassifier

    load_before = _load_1m()
    with _threads(bench.threads):
        start = time.perf_counter()
        corpus = _make_corpus(bench)
        labels = _crf_labels(corpus, bench)
        torch.manual_seed(bench.seed)  # the untrained head
        model = MultiLabelClassifier(corpus.num_tags, pretrained=True)
        measures = _box_measures(corpus, bench)
        for device in bench.devices:
            measures += _torch_measures(corpus, bench, device, model, labels)
        log.info("bench segmentation: %d images, %d boxes ready in %.1f s; %d figures x %d repeats",
                 len(corpus.rgb), corpus.num_boxes, time.perf_counter() - start, len(measures), bench.repeats)
        for measure in measures:
            measure.warmup()
        for repeat in range(bench.repeats):
            for measure in measures:
                _sync(measure.device)
                t0 = time.perf_counter()
                measure.run()
                measure.seconds.append(time.perf_counter() - t0)
                log.info("bench segmentation: repeat %d %s@%s %.1f %s", repeat + 1, measure.name, measure.device,
                         measure.items / measure.seconds[-1], measure.unit)
        machine = _machine(bench.devices)
    figures: dict[str, dict[str, dict[str, Any]]] = {}
    for measure in measures:
        figures.setdefault(measure.device, {})[measure.name] = _figure(measure)
    tags = [len(t) for t in corpus.tags]
    return {
        "corpus": {"images": bench.images, "width": bench.width, "height": bench.height, "seed": bench.seed,
                   "boxes": corpus.num_boxes, "classes": corpus.num_classes, "tags": corpus.num_tags,
                   "tags_per_image": [min(tags), max(tags)], "generator": "synthesize_segmentation_image (in memory)"},
        "settings": {**{k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(bench).items()},
                     "crf": dataclasses.asdict(DenseCRFConfig()), "pretrained_loaded": model.pretrained_loaded},
        "figures": figures,
        "ratios": ratios(figures),
        "machine": machine,
        "load_1m": [load_before, _load_1m()],
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of a :func:`bench_segmentation` report."""
    corpus, settings, machine = report["corpus"], report["settings"], report["machine"]
    lines = [
        f"segmentation: {corpus['images']} images {corpus['width']}x{corpus['height']} (seed {corpus['seed']}), "
        f"{corpus['boxes']} boxes, C = {corpus['classes']} classes, {corpus['tags_per_image'][0]}.."
        f"{corpus['tags_per_image'][1]} tags per image; median (min - max) of {settings['repeats']} repeat(s)",
        f"machine: {machine['cpu_model']}, {machine['cpus']} CPUs; torch {machine['versions']['torch']} "
        f"({machine['torch_threads']} threads), OpenCV {machine['versions']['opencv']} "
        f"({machine['opencv_threads']} threads); load 1m {report['load_1m'][0]} -> {report['load_1m'][1]}"
        + "".join(f"; {d}: {name}" for d, name in machine.get("cuda", {}).items()),
        "",
    ]
    widths = (20, 8, 10, 7, 10, 10, 10, 0)
    header = ("figure", "device", "unit", "items", "median", "min", "max", "notes")
    lines.append("".join(c.ljust(w) if i < 3 else c.rjust(w) if w else "  " + c
                         for i, (c, w) in enumerate(zip(header, widths))))
    for device, figs in report["figures"].items():
        for name, fig in figs.items():
            notes = ", ".join(f"{k} {'x'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in fig.items()
                              if k not in ("unit", "items", "median", "min", "max", "values", "seconds"))
            values = (name, device, fig["unit"], str(fig["items"]), f"{fig['median']:.2f}", f"{fig['min']:.2f}",
                      f"{fig['max']:.2f}", notes)
            lines.append("".join(v.ljust(w) if i < 3 else v.rjust(w) if w else "  " + v
                                 for i, (v, w) in enumerate(zip(values, widths))))
    lines.append("")
    lines.append("ratios (per repeat, median (min - max)):")
    for group, group_ratios in report["ratios"].items():
        for name, r in group_ratios.items():
            lines.append(f"  {group:<10}  {name:<38} {r['median']:.2f} ({r['min']:.2f} - {r['max']:.2f})")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- command line


def register_segmentation_bench(sub: argparse._SubParsersAction) -> None:
    """Add ``segmentation`` to the ``bench`` subcommand's subparsers ``sub``."""
    parser = sub.add_parser(
        "segmentation",
        help="boxes/s of GrabCut and the second cue, images/s of Grad-CAM and of the dense CRF",
        description="Generate a synthetic segmentation corpus in memory and measure, side by side in one run, "
        "boxes/s of GrabCut, of each second cue and of box_labels (1 and --workers threads), and images/s of "
        "Grad-CAM (pretrained EfficientNet-Lite0) and of the dense CRF (palette; direct on a small image) on "
        "each --device. Median, min and max over --repeats.",
    )
    parser.add_argument("--images", type=int, default=24, help="synthetic images (default 24)")
    parser.add_argument("--width", type=int, default=320, help="image width (default 320)")
    parser.add_argument("--height", type=int, default=240, help="image height (default 240)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed (default 0)")
    parser.add_argument("--device", default="cpu",
                        help="torch device(s) of the Grad-CAM and CRF figures: cpu, cuda, cuda:N, or a comma-"
                             "separated list measured side by side, e.g. cpu,cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads and OpenCV threads (default 1: steadier on a shared host)")
    parser.add_argument("--workers", type=int, default=2,
                        help="box_labels_batch threads of the parallel box figure (default 2; 1: no parallel figure)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per figure, interleaved (default 3)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per Grad-CAM call (default 8)")
    parser.add_argument("--crf-batch-size", type=int, default=1, help="images per dense CRF call (default 1)")
    parser.add_argument("--second-cue", default="colour_ratio", choices=_SECOND_CUES,
                        help="second cue of box_labels (default colour_ratio)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=_segmentation_command)


def _segmentation_command(args: argparse.Namespace) -> int:
    from labelmill.pipelines.cli import UsageError

    devices = tuple(d.strip() for d in str(args.device).split(",") if d.strip())
    try:
        bench = SegmentationBenchConfig(
            images=args.images, width=args.width, height=args.height, seed=args.seed, devices=devices,
            threads=args.threads, workers=args.workers, repeats=args.repeats, batch_size=args.batch_size,
            crf_batch_size=args.crf_batch_size, second_cue=args.second_cue)
        check_devices(bench.devices)
    except ValueError as exc:
        raise UsageError(f"bench segmentation: {exc}") from None
    report = bench_segmentation(bench)
    sys.stdout.write(json.dumps(report) + "\n" if args.json else format_report(report))
    return 0
