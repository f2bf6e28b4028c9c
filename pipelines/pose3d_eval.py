"""`labelmill eval pose3d`: accuracy of a pose3d dataset version against synthetic ground truth.

Reads every sample's ``smpl.npz`` from the shards and the ground truth of its input
(``GT/<youtube id>.npz`` as ``labelmill synth pose`` writes it) and reports MPJPE and PA-MPJPE
(mm) of the initialisation and of the final fit over kept frames (the samples) and, from the
version's ``fits/<input>.npz`` (every fitted frame, kept or dropped), over all frames; without
``fits/`` (a run with ``write_fits: false``) ``over_all_frames`` is null.

Joints compared: the 17 COCO keypoints in 3D (root = hip midpoint) for init and final (the
dataset stores the init as keypoints only), and the 24 SMPL joints for the final fit.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import tarfile
from collections import defaultdict
from typing import Any

import numpy as np

from labelmill.infra import storage
from labelmill.infra.results import ResultStore
from labelmill.infra.dataset_version import resolve_version, shard_urls
from labelmill.models.metrics import mpjpe, pa_mpjpe
from labelmill.infra.formats.shards import decode_npz, sample_key_from_member, split_member_name

__all__ = ["evaluate_pose3d", "register_pose3d_eval"]

_CLIP_SUFFIX = re.compile(r"_\d{6}_\d{6}$")


def _hip_aligned(points: np.ndarray) -> np.ndarray:
    """COCO-17 ``(..., 17, 3)`` relative to the hip midpoint (keypoints 11, 12)."""
    return points - 0.5 * (points[..., 11:12, :] + points[..., 12:13, :])


def _read_samples(version_url: str) -> dict[str, dict[int, dict[str, np.ndarray]]]:
    """``{input key: {frame: smpl arrays}}`` from every shard of a version."""
    out: dict[str, dict[int, dict[str, np.ndarray]]] = defaultdict(dict)
    for url in shard_urls(version_url):
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(url))) as tar:
            for member in tar.getmembers():
                member_key, extension = split_member_name(member.name)
                if extension != "smpl.npz":
                    continue
                input_key, frame = sample_key_from_member(member_key).rsplit("/", 1)
                out[input_key][int(frame)] = decode_npz(tar.extractfile(member).read())
    return out


def _read_fits(version_url: str) -> dict[str, dict[str, np.ndarray]]:
    """``{input key: arrays}`` from ``fits/*.npz`` (empty when the version has none)."""
    out = {}
    index_url = storage.join(version_url, "fits.json")
    if storage.exists(index_url):
        store = ResultStore(version_url.rstrip("/").rsplit("/", 2)[0])
        for key, where in json.loads(storage.read_text(index_url)).items():
            arrays = store.read_path(where["fit"], ("joints3d", "keypoints3d", "keypoints3d_init"))
            arrays.update(store.read_path(where["filter"], ("frame_loss", "keep_frame")))
            arrays["keep_frame"] = np.asarray(arrays["keep_frame"], np.float32)
            out[key] = arrays
        return out
    for url in storage.list_files(storage.join(version_url, "fits"), "*.npz"):
        out[sample_key_from_member(url.rsplit("/", 1)[1][: -len(".npz")])] = decode_npz(storage.read_bytes(url))
    return out


def _accuracy(init_kp: list, final_kp: list, gt_kp: list, final_j: list, gt_j: list) -> dict[str, Any]:
    gk = _hip_aligned(np.asarray(gt_kp, np.float64))
    ik = _hip_aligned(np.asarray(init_kp, np.float64))
    fk = _hip_aligned(np.asarray(final_kp, np.float64))
    fj, gj = np.asarray(final_j, np.float64), np.asarray(gt_j, np.float64)
    return {
        "frames": len(final_kp),
        "init": {"mpjpe_mm": float(mpjpe(ik, gk).mean()), "pa_mpjpe_mm": float(pa_mpjpe(ik, gk).mean())},
        "final": {"mpjpe_mm": float(mpjpe(fk, gk).mean()), "pa_mpjpe_mm": float(pa_mpjpe(fk, gk).mean()),
                  "mpjpe_smpl24_mm": float(mpjpe(fj, gj).mean()),
                  "pa_mpjpe_smpl24_mm": float(pa_mpjpe(fj, gj).mean())},
    }


def _gt_for(gt_url: str, input_key: str) -> dict[str, np.ndarray] | None:
    base = input_key.rsplit("/", 1)[-1]  # directory corpora key by relative path
    for name in (input_key, _CLIP_SUFFIX.sub("", input_key), base, _CLIP_SUFFIX.sub("", base)):
        url = storage.join(gt_url, f"{name}.npz")
        if storage.exists(url):
            with np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False) as z:
                return {k: z[k] for k in ("keypoints3d", "joints3d")}
    return None


def evaluate_pose3d(dataset_url: str, gt_url: str) -> dict[str, Any]:
    """Accuracy of ``dataset_url`` (an output root or a version directory) against ``gt_url``."""
    version = resolve_version(dataset_url)
    samples = _read_samples(version.url)
    init_kp, final_kp, gt_kp, final_j, gt_j = [], [], [], [], []
    missing_gt = []
    for input_key in sorted(samples):
        gt = _gt_for(gt_url, input_key)
        if gt is None:
            missing_gt.append(input_key)
            continue
        for frame, arrays in sorted(samples[input_key].items()):
            if frame >= len(gt["joints3d"]):
                raise ValueError(f"sample {input_key}/{frame:06d}: ground truth has only {len(gt['joints3d'])} frames")
            init_kp.append(arrays["keypoints3d_init"])
            final_kp.append(arrays["keypoints3d"])
            gt_kp.append(gt["keypoints3d"][frame])
            final_j.append(arrays["joints3d"])
            gt_j.append(gt["joints3d"][frame])
    if not final_kp:
        raise ValueError(f"no sample of {version.url} has ground truth under {gt_url}")
    kept = _accuracy(init_kp, final_kp, gt_kp, final_j, gt_j)
    everything = None
    fits = _read_fits(version.url)
    if fits:
        columns: list[list] = [[], [], [], [], []]
        for input_key, arrays in sorted(fits.items()):
            gt = _gt_for(gt_url, input_key)
            if gt is None:
                continue
            frames = min(len(arrays["joints3d"]), len(gt["joints3d"]))
            for values, column in zip((arrays["keypoints3d_init"], arrays["keypoints3d"], gt["keypoints3d"],
                                       arrays["joints3d"], gt["joints3d"]), columns):
                column.extend(values[:frames])
        everything = _accuracy(*columns) if columns[0] else None
    return {
        "dataset": version.url,
        "frames": len(final_kp),
        "inputs": len(samples) - len(missing_gt),
        "inputs_without_gt": missing_gt,
        "over_kept_frames": kept,
        "over_all_frames": everything,
        "mpjpe_mm": kept["final"]["mpjpe_mm"],
        "pa_mpjpe_mm": kept["final"]["pa_mpjpe_mm"],
    }


def register_pose3d_eval(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "pose3d",
        help="MPJPE / PA-MPJPE of a pose3d dataset (init and final) against synthetic ground truth",
        description="Read every sample of a pose3d dataset version and compare its init and fitted 3D "
        "keypoints with the ground truth written by `labelmill synth pose`.",
    )
    parser.add_argument("--dataset", required=True, help="dataset root (uses LATEST) or a version directory")
    parser.add_argument("--gt", required=True, help="ground-truth folder, e.g. CORPUS/gt")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    report = evaluate_pose3d(args.dataset, args.gt.rstrip("/"))
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        kept = report["over_kept_frames"]
        sys.stdout.write(
            f"{report['dataset']}: {report['frames']} kept frames of {report['inputs']} inputs\n"
            f"  init : MPJPE {kept['init']['mpjpe_mm']:.1f} mm, PA-MPJPE {kept['init']['pa_mpjpe_mm']:.1f} mm\n"
            f"  final: MPJPE {kept['final']['mpjpe_mm']:.1f} mm, PA-MPJPE {kept['final']['pa_mpjpe_mm']:.1f} mm\n"
        )
        every = report["over_all_frames"]
        if every:
            sys.stdout.write(
                f"  all {every['frames']} fitted frames: init MPJPE {every['init']['mpjpe_mm']:.1f} mm -> "
                f"final {every['final']['mpjpe_mm']:.1f} mm (PA-MPJPE {every['final']['pa_mpjpe_mm']:.1f} mm)\n"
            )
    return 0
