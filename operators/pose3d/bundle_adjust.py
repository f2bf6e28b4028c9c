"""Engine-free operator: per-video bundle adjustment over SMPL + loss filtering.

Input batch (columnar, one entry per video; arrays are per video, F frames, P people):

    key                 str
    keypoints           (F, P, 17, 3) float  detected COCO keypoints (x, y, confidence) pixels
    person_mask         (F, P) bool          detection p exists in frame t
    init_betas          (F, 10)              per-frame initialisation (e.g. HMR)
    init_global_orient  (F, 3)
    init_body_pose      (F, 69)
    init_camera         (F, 3)               (s px/m, u_x px, u_y px)

Items whose ``status`` is ``"failed"`` pass through untouched; an item with malformed inputs
(wrong shapes, non-finite init) becomes failed with a reason naming it and the batch goes on.

Output: the input columns plus ``status``/``reason`` and, per fitted video (None for failed ones),

    betas (10,), global_orient (F,3), body_pose (F,69), camera (F,3), joints3d (F,24,3),
    keypoints3d (F,17,3), projected2d (F,17,2), keypoints3d_init (F,17,3), frame_loss (F,),
    keep_frame (F,) bool, frame_reason list[str], video_loss float, keep_video bool,
    video_reason str, fit_energy float, fit_iterations int.

Long videos are split into overlapping windows (``fit.window``), all windows of all videos of
the batch are solved together, then stitched.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np
import torch

from labelmill.models.body_model import BodyModel, BodyModelConfig
from labelmill.models.camera import project
from labelmill.models.device import torch_threads, usable_device
from labelmill.models.pose3d_fit import FitConfig, Pose3dEnergy, VideoBatch, fit_videos
from labelmill.models.pose_prior import GMMPosePrior, PriorConfig
from labelmill.models.windows import plan_windows, stitch_frames, stitch_shared
from labelmill.operators.pose3d.fit_quality import FilterConfig
from labelmill.operators.pose3d.loss_filter import filter_columns
from labelmill.infra.formats.items import ItemStatus
from labelmill.operators.pose3d.item_errors import failure_reason, isolate

log = logging.getLogger(__name__)

__all__ = ["BundleAdjust"]

_OUTPUT_KEYS = (
    "betas", "global_orient", "body_pose", "camera", "joints3d", "keypoints3d", "projected2d", "keypoints3d_init",
    "frame_loss", "keep_frame", "frame_reason", "video_loss", "keep_video", "video_reason", "fit_energy",
    "fit_iterations",
)
_FILTER_KEYS = ("frame_loss", "keep_frame", "frame_reason", "video_loss", "keep_video", "video_reason")
_INPUT_KEYS = ("key", "keypoints", "person_mask", "init_betas", "init_global_orient", "init_body_pose", "init_camera")


def _check_video(video: dict[str, np.ndarray]) -> str | None:
    """Why one video's inputs cannot be fitted, or None. Shapes as in the module docstring."""
    num_frames = video["init_camera"].shape[0] if video["init_camera"].ndim == 2 else -1
    expected = {
        "keypoints": (num_frames, None, 17, 3), "person_mask": (num_frames, None), "init_betas": (num_frames, 10),
        "init_global_orient": (num_frames, 3), "init_body_pose": (num_frames, 69), "init_camera": (num_frames, 3),
    }
    for name, shape in expected.items():
        got = video[name].shape
        if len(got) != len(shape) or any(e is not None and g != e for g, e in zip(got, shape)):
            want = "(" + ", ".join("P" if e is None else str(e) for e in shape) + ")"
            return f"{name} has shape {got}, expected {want}"
        if name != "person_mask" and name != "keypoints" and not np.isfinite(video[name]).all():
            return f"{name} has non-finite values"
    if video["person_mask"].shape[1] != video["keypoints"].shape[1]:
        return "keypoints and person_mask disagree on the number of people"
    return None


class BundleAdjust:
    """Fit SMPL to whole videos, many per batch, then filter by normalised loss."""

    resources = {"num_cpus": 1.0, "num_gpus": 0.0, "batch_size": 16}  # flat memory; see docs/benchmarks.md

    reads = _INPUT_KEYS
    writes = (*_OUTPUT_KEYS, "body_height")

    def __init__(
        self,
        *,
        body_model: BodyModelConfig | None = None,
        prior: PriorConfig | None = None,
        fit: FitConfig | None = None,
        filter: FilterConfig | None | bool = None,
    ) -> None:
        """``filter=False``: fit only; the loss filter is then its own stage (:class:`LossFilter`),
        and the output carries ``body_height`` instead of the loss and keep columns."""
        self.body_model_config = body_model or BodyModelConfig()
        self.prior_config = prior or PriorConfig()
        self.fit_config = fit or FitConfig()
        self.filter_config = None if filter is False else (filter or FilterConfig())
        self._energy: Pose3dEnergy | None = None
        self._body_height_cache: dict[bytes, float] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        """Configuration and model-file contents: what a stored fit depends on besides the code."""
        from labelmill.infra.storage import file_fingerprint
        from labelmill.models.model_files import embedded_model_file
        from labelmill.models.pose_prior import DEFAULT_PRIOR_FILE

        body = self.body_model_config.path  # None: the body generated by our code (covered by the code fingerprint)
        prior = self.prior_config.path or embedded_model_file(DEFAULT_PRIOR_FILE)
        return {
            "body_model": self.body_model_config, "prior": self.prior_config, "fit": self.fit_config,
            "filter": self.filter_config,
            "body_model_file": file_fingerprint(body, mode="sha1") if body else None,
            "prior_file": file_fingerprint(prior, mode="sha1") if prior else None,
        }

    def setup(self) -> None:
        """Load the body model and prior once per worker."""
        if self._energy is not None:
            return
        device = usable_device(self.fit_config.device, what="bundle adjustment (fit.device)")
        self._device = device
        body = BodyModel.from_config(self.body_model_config).to(device)
        prior = GMMPosePrior.from_config(self.prior_config).to(device)
        cfg = self.fit_config
        if str(device) != cfg.device:
            import dataclasses

            cfg = dataclasses.replace(cfg, device=str(device))
        self._energy = Pose3dEnergy(body_model=body, prior=prior, config=cfg)

    @property
    def energy(self) -> Pose3dEnergy:
        self.setup()
        if self._energy is None:  # setup() always sets it; this guards subclass overrides
            raise RuntimeError("BundleAdjust.setup() did not build the energy")
        return self._energy

    # -- batch -----------------------------------------------------------------------------
    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Fit the pending videos of ``batch``; failed or malformed items pass through with a reason."""
        missing = [k for k in _INPUT_KEYS if k not in batch]
        if missing:
            raise KeyError(f"BundleAdjust batch lacks columns {missing}")
        self.setup()
        t0 = time.perf_counter()
        keys = list(batch["key"])
        items = ItemStatus.of(batch, len(keys))
        videos: dict[int, dict[str, np.ndarray]] = {}
        windows_per_video: dict[int, list[tuple[int, int]]] = {}
        for i in items.pending():
            key = keys[i]
            try:
                video = {k: np.asarray(batch[k][i]) for k in _INPUT_KEYS if k != "key"}
                problem = _check_video(video)
                if not problem:
                    num_frames = video["init_camera"].shape[0]
                    windows_per_video[i] = plan_windows(num_frames, self.fit_config.window,
                                                        self.fit_config.window_overlap)
            except Exception as exc:  # noqa: BLE001 - one item's odd input fails that item
                items.fail(i, failure_reason("bundle adjustment", key, exc))
                continue
            if problem:
                items.fail(i, f"bundle adjustment of {key}: {problem}")
                continue
            videos[i] = video

        def fit(members: Sequence[int]) -> dict[int, dict[str, Any]]:
            """Solve every window of ``members`` together and stitch each video's result."""
            problems = [(i, s, e) for i in members for s, e in windows_per_video[i]]
            fitted = self._fit_problems(videos, problems) if problems else []
            results, cursor = {}, 0
            for i in members:
                wins = windows_per_video[i]
                results[i] = self._fit_outputs(videos[i], wins, fitted[cursor : cursor + len(wins)])
                cursor += len(wins)
            return results

        results, failures = isolate(fit, list(videos), what="bundle adjustment", keys=keys)
        for i, reason in failures.items():
            items.fail(i, reason)
        problems = [w for i in videos for w in windows_per_video[i]]

        out: dict[str, list] = {k: list(batch[k]) for k in batch}
        items.write(out)
        names = _OUTPUT_KEYS if self.filter_config is not None else (
            *(k for k in _OUTPUT_KEYS if k not in _FILTER_KEYS), "body_height")
        for name in names:
            out[name] = [None] * len(keys)
        for i, result in results.items():
            for name, value in result.items():
                out[name][i] = value
        elapsed = time.perf_counter() - t0
        frames = sum(v["init_camera"].shape[0] for v in videos.values())
        log.info("bundle adjustment: %d videos, %d frames, %d problems in %.1fs (%.0f frames/s)",
                 len(videos), frames, len(problems), elapsed, frames / max(elapsed, 1e-9))
        return out

    def _fit_problems(self, videos: dict[int, dict[str, np.ndarray]], problems: list[tuple[int, int, int]]) -> list[dict]:
        """Solve all windows; return per-problem numpy results in ``problems`` order.

        Problems are padded to a length that depends only on themselves (a multiple of
        ``fit.pad_multiple`` frames) and solved in one batch per padded length, so a video's
        result does not depend on which other videos share its batch: with one CPU thread
        (``fit.cpu_threads``) it is bit for bit the same on every engine.
        """
        multiple = self.fit_config.pad_multiple
        groups: dict[int, list[int]] = {}
        for n, (_, s, e) in enumerate(problems):
            groups.setdefault(-(-(e - s) // multiple) * multiple, []).append(n)
        out: list[dict | None] = [None] * len(problems)
        with torch_threads(self.fit_config.cpu_threads if self._device.type == "cpu" else 0):
            for padded, members in sorted(groups.items()):
                for n, result in zip(members, self._solve(videos, [problems[n] for n in members], padded)):
                    out[n] = result
        return out  # type: ignore[return-value]

    def _solve(self, videos: dict[int, dict[str, np.ndarray]], problems: list[tuple[int, int, int]], f_pad: int) -> list[dict]:
        """One batched solve of ``problems`` padded to ``f_pad`` frames."""
        p_max = max(max(videos[v]["keypoints"].shape[1], 1) for v, _, _ in problems)
        n = len(problems)
        det = np.zeros((n, f_pad, p_max, 17, 3), dtype=np.float32)
        pmask = np.zeros((n, f_pad, p_max), dtype=bool)
        fmask = np.zeros((n, f_pad), dtype=bool)
        init = {
            "init_betas": np.zeros((n, f_pad, 10), np.float32),
            "init_global_orient": np.zeros((n, f_pad, 3), np.float32),
            "init_body_pose": np.zeros((n, f_pad, 69), np.float32),
            "init_camera": np.zeros((n, f_pad, 3), np.float32),
        }
        for i, (v, s, e) in enumerate(problems):
            video = videos[v]
            length = e - s
            kp = np.nan_to_num(video["keypoints"][s:e].astype(np.float32))
            det[i, :length, : kp.shape[1]] = kp
            pmask[i, :length, : kp.shape[1]] = video["person_mask"][s:e]
            fmask[i, :length] = True
            for k in init:
                init[k][i, :length] = video[k][s:e]
                # Padded frames repeat the last real frame's init so every value stays finite.
                init[k][i, length:] = init[k][i, length - 1]
        batch = VideoBatch(
            detections=torch.from_numpy(det), person_mask=torch.from_numpy(pmask), frame_mask=torch.from_numpy(fmask),
            **{k: torch.from_numpy(a) for k, a in init.items()},
        )
        result = fit_videos(self.energy, batch)
        with torch.no_grad():
            _, init_kp = self.energy.body_frames(
                batch.init_betas.to(self._device), batch.init_global_orient.to(self._device),
                batch.init_body_pose.to(self._device),
            )
        out = []
        for i, (_, s, e) in enumerate(problems):
            length = e - s
            out.append({
                "betas": result.betas[i].cpu().numpy(),
                "global_orient": result.global_orient[i, :length].cpu().numpy(),
                "body_pose": result.body_pose[i, :length].cpu().numpy(),
                "camera": result.camera[i, :length].cpu().numpy(),
                "keypoints3d_init": init_kp[i, :length].cpu().numpy(),
                "energy": float(result.energy[i]),
                "iterations": int(result.iterations[i]),
            })
        return out

    def _body_height(self, betas: np.ndarray) -> float:
        """Standing height proxy (metres): vertical extent of the rest-pose COCO keypoints."""
        key = betas.astype(np.float32).tobytes()
        if key not in self._body_height_cache:
            with torch.no_grad():
                b = torch.from_numpy(betas.astype(np.float32))[None].to(self._device)
                zero = torch.zeros(1, 3, device=self._device)
                out = self.energy.body_model.joints_only(b, zero, torch.zeros(1, 69, device=self._device))
                y = out.keypoints3d[0, :, 1].cpu().numpy()
            self._body_height_cache[key] = float(y.max() - y.min())
        return self._body_height_cache[key]

    def _fit_outputs(self, video: dict[str, np.ndarray], wins: list[tuple[int, int]], parts: list[dict]) -> dict[str, Any]:
        num_frames = video["init_camera"].shape[0]
        if num_frames == 0:
            empty3 = np.zeros((0, 3), np.float32)
            empty = dict((
                ("betas", np.zeros(10, np.float32)), ("global_orient", empty3), ("body_pose", np.zeros((0, 69), np.float32)),
                ("camera", empty3), ("joints3d", np.zeros((0, 24, 3), np.float32)),
                ("keypoints3d", np.zeros((0, 17, 3), np.float32)), ("projected2d", np.zeros((0, 17, 2), np.float32)),
                ("keypoints3d_init", np.zeros((0, 17, 3), np.float32)), ("frame_loss", np.zeros(0, np.float32)),
                ("keep_frame", np.zeros(0, bool)), ("frame_reason", []), ("video_loss", float("nan")),
                ("keep_video", False), ("video_reason", "no_frames"), ("fit_energy", float("nan")), ("fit_iterations", 0),
            ))
            if self.filter_config is None:
                empty = {k: v for k, v in empty.items() if k not in _FILTER_KEYS}
                empty["body_height"] = float("nan")
            return empty
        betas = stitch_shared(wins, [p["betas"] for p in parts]).astype(np.float32)
        go = stitch_frames(wins, [p["global_orient"] for p in parts], num_frames)
        bp = stitch_frames(wins, [p["body_pose"] for p in parts], num_frames)
        cam = stitch_frames(wins, [p["camera"] for p in parts], num_frames)
        kp_init = stitch_frames(wins, [p["keypoints3d_init"] for p in parts], num_frames)
        with torch.no_grad():
            dev = self._device
            body = self.energy.body_model.joints_only(
                torch.from_numpy(np.repeat(betas[None], num_frames, 0)).to(dev),
                torch.from_numpy(go.astype(np.float32)).to(dev),
                torch.from_numpy(bp.astype(np.float32)).to(dev),
            )
            joints = body.joints.cpu().numpy()
            kp3d = body.keypoints3d.cpu().numpy()
        projected = project(kp3d, cam.astype(np.float32))
        fitted = dict((
            ("betas", betas), ("global_orient", go.astype(np.float32)), ("body_pose", bp.astype(np.float32)),
            ("camera", cam.astype(np.float32)), ("joints3d", joints.astype(np.float32)),
            ("keypoints3d", kp3d.astype(np.float32)), ("projected2d", projected.astype(np.float32)),
            ("keypoints3d_init", kp_init.astype(np.float32)),
            ("fit_energy", float(np.mean([p["energy"] for p in parts]))),
            ("fit_iterations", int(max(p["iterations"] for p in parts))),
        ))
        if self.filter_config is None:
            return {**fitted, "body_height": self._body_height(betas)}
        return {**fitted, **filter_columns(projected, video["keypoints"], video["person_mask"], cam,
                                           self._body_height(betas), self.filter_config)}
