"""Engine-free operator: per-frame SMPL initialisation from the person of interest's 2D keypoints.

The pose3d pipeline's bundle adjustment starts from a per-frame estimate (HMR's role in the
paper). :class:`KeypointInit` runs the keypoint initialiser
(:class:`labelmill.models.keypoint_initializer.KeypointInitializer`) on every frame of every
video of a batch at once.

Input columns, one entry per video:

    main_keypoints      (F, 17, 3) float   the person of interest's keypoints (x, y px, confidence);
                                           zeros where absent (as TrackPersonOfInterest writes them)
    keypoint_width/-height, frame_width/-height or width/height (optional) int: image size, used
                                           only for videos without any usable frame
    status, reason      (optional)         items already ``failed`` pass through

Added columns, one entry per video (float32):

    init_betas (F, 10), init_global_orient (F, 3), init_body_pose (F, 69) axis-angle,
    init_camera (F, 3) (s px/m, u_x px, u_y px), init_filled (F,) bool

A frame with fewer than ``min_keypoints`` keypoints at the initialiser's ``min_confidence`` is
not predicted: it copies the estimate of the nearest usable frame of the same video (the
earlier one on a tie) and is flagged in ``init_filled``. A video with no usable frame gets the
initialiser's mean parameters (upright, facing the camera, mean pose, zero betas) with the
mean camera centred in the image (its person box 60% of the image height), all flagged.

Also here, because operators may import the synthetic world and models may not: the
training sources of the default initialiser (:func:`synthetic_training_sources`) and
:func:`load_default_initializer`, which trains the default on first use when its weights are
missing.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from labelmill.models.device import usable_device
from labelmill.models.initializer_training import InitializerTrainingConfig, TrainingSources, train_initializer
from labelmill.models.keypoint_initializer import (
    NUM_KEYPOINTS,
    KeypointInitializer,
    cached_weights_path,
    denormalize_camera,
    rotmat_to_axis_angle,
    split_params,
)
from labelmill.operators.pose3d.frame_fill import nearest_valid_index as fill_from_nearest
from labelmill.infra.formats.items import ItemStatus
from labelmill.operators.pose3d.item_errors import failure_reason, isolate

log = logging.getLogger(__name__)

__all__ = [
    "KeypointInitConfig",
    "KeypointInit",
    "fill_from_nearest",
    "motion_library_frames",
    "synthetic_detector_noise",
    "synthetic_training_sources",
    "load_default_initializer",
]

_OUTPUT_COLUMNS = ("init_betas", "init_global_orient", "init_body_pose", "init_camera", "init_filled")
_SIZE_COLUMNS = (("keypoint_width", "keypoint_height"), ("frame_width", "frame_height"), ("width", "height"))
_FALLBACK_BOX = 0.6  # person box / image height for videos without a usable frame


@dataclasses.dataclass
class KeypointInitConfig:
    """Knobs of :class:`KeypointInit` (the ``init`` stage of pose3d)."""

    weights: str | None = None  # .npz from `labelmill train initializer`; None: the embedded default
    device: str = "cpu"  # torch device of the network ("cuda" falls back to CPU when absent)
    batch_size: int = 4096  # frames per network call
    min_keypoints: int = 6  # a frame needs this many keypoints at the model's min_confidence to be predicted
    train_if_missing: bool = True  # embedded default only: train it (minutes) when its weights are missing

    def __post_init__(self) -> None:
        if self.weights is not None and (not isinstance(self.weights, str) or not self.weights.strip()):
            raise ValueError(f"weights must be a non-empty path or null (embedded default), got {self.weights!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be a torch device string such as 'cpu' or 'cuda', got {self.device!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not isinstance(self.min_keypoints, int) or not 1 <= self.min_keypoints <= NUM_KEYPOINTS:
            raise ValueError(f"min_keypoints must be an integer in [1, {NUM_KEYPOINTS}], got {self.min_keypoints!r}")


class KeypointInit:
    """Per-frame SMPL initialisation of the person of interest from its 2D keypoints."""

    resources: ClassVar[dict[str, float]] = {"num_cpus": 1, "num_gpus": 0, "batch_size": 16}

    # Columns read and added (the persisted pipeline loads exactly these from stored results).
    reads = ("key", "main_keypoints")
    writes = _OUTPUT_COLUMNS

    def __init__(
        self,
        *,
        weights: str | None = None,
        device: str = "cpu",
        batch_size: int = 4096,
        min_keypoints: int = 6,
        train_if_missing: bool = True,
    ) -> None:
        self.config = KeypointInitConfig(
            weights=weights, device=device, batch_size=batch_size, min_keypoints=min_keypoints,
            train_if_missing=train_if_missing,
        )  # fmt: skip
        self._model: KeypointInitializer | None = None

    @classmethod
    def from_config(cls, config: KeypointInitConfig) -> "KeypointInit":
        return cls(**dataclasses.asdict(config))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_model"] = None  # loaded again by setup() on the worker
        return state

    def fingerprint(self) -> dict[str, Any]:
        """Configuration and the weights' contents (the embedded file's when none is given)."""
        from labelmill.infra.storage import file_fingerprint
        from labelmill.models.keypoint_initializer import DEFAULT_WEIGHTS_FILE
        from labelmill.models.model_files import embedded_model_file

        cfg = self.config
        path = cfg.weights or embedded_model_file(DEFAULT_WEIGHTS_FILE)
        weights = file_fingerprint(path, mode="sha1") if path else "trained-on-demand"
        return {"config": {**dataclasses.asdict(cfg), "device": None, "batch_size": None}, "weights": weights}

    def setup(self) -> None:
        """Load the initialiser once per worker (training the embedded default if it is missing)."""
        if self._model is not None:
            return
        cfg = self.config
        device = usable_device(cfg.device, what="keypoint initialiser")
        if cfg.weights is None:
            model = load_default_initializer(train_if_missing=cfg.train_if_missing)
        else:
            model = KeypointInitializer.from_file(cfg.weights)
        self._model = model.to(device).eval()

    def set_model(self, model: KeypointInitializer) -> None:
        """Use an initialiser already in memory (tests, evaluation) instead of loading ``weights``."""
        self._model = model.eval()

    @property
    def model(self) -> KeypointInitializer:
        if self._model is None:
            self.setup()
        return self._model  # type: ignore[return-value]  (setup() always sets it)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if "main_keypoints" not in batch:
            found = ", ".join(batch) or "no columns"
            raise ValueError(f"KeypointInit needs a 'main_keypoints' column; the batch has {found}")
        model = self.model
        size = len(batch["main_keypoints"])
        items = ItemStatus.of(batch, size)
        keys = items.keys
        videos: dict[int, np.ndarray] = {}
        for i in items.pending():
            try:
                keypoints = np.asarray(batch["main_keypoints"][i], dtype=np.float32)
            except (TypeError, ValueError) as exc:
                items.fail(i, failure_reason("initialisation", keys[i], exc))
                continue
            if keypoints.ndim != 3 or keypoints.shape[1:] != (NUM_KEYPOINTS, 3):
                items.fail(i, f"item {keys[i]}: main_keypoints must have shape (F, {NUM_KEYPOINTS}, 3), "
                              f"got {keypoints.shape}")  # fmt: skip
                continue
            videos[i] = keypoints
        usable = {i: self._usable(k) for i, k in videos.items()}

        def initialise(members: Sequence[int]) -> dict[int, dict[str, np.ndarray]]:
            """All frames of ``members`` through the initialiser at once, split back per video."""
            frames = [videos[i][usable[i]] for i in members]
            stacked = np.concatenate(frames) if frames else np.zeros((0, NUM_KEYPOINTS, 3), np.float32)
            predicted = model.initialise(stacked, batch_size=self.config.batch_size)
            results, offset = {}, 0
            for i in members:
                count = int(usable[i].sum())
                own = {name: value[offset : offset + count] for name, value in predicted.items()}
                offset += count
                results[i] = self._per_video(own, usable[i], _image_size(batch, i))
            return results

        results, failures = isolate(initialise, list(videos), what="initialisation", keys=keys)
        for i, reason in failures.items():
            items.fail(i, reason)
        columns: dict[str, list] = {name: [] for name in _OUTPUT_COLUMNS}
        for i in range(size):
            result = results.get(i) if not items.is_failed(i) else None
            result = result if result is not None else _empty_result(0)
            for name in _OUTPUT_COLUMNS:
                columns[name].append(result[name])
        out = dict(batch)
        out.update(columns)
        items.write(out)
        return out

    def _usable(self, keypoints: np.ndarray) -> np.ndarray:
        """``(F,) bool``: frames with enough confident keypoints."""
        confident = np.nan_to_num(keypoints[..., 2]) >= self.model.config.min_confidence
        return confident.sum(1) >= self.config.min_keypoints

    def _per_video(
        self, own: dict[str, np.ndarray], usable: np.ndarray, image_size: tuple[int, int]
    ) -> dict[str, np.ndarray]:
        num_frames = usable.shape[0]
        if num_frames == 0:
            return _empty_result(0)
        if not usable.any():
            mean = self._fallback(image_size)
            return {**{name: np.repeat(value[None], num_frames, 0) for name, value in mean.items()},
                    "init_filled": np.ones(num_frames, bool)}  # fmt: skip
        source = fill_from_nearest(usable)
        position = np.cumsum(usable) - 1  # row of each usable frame in `own`
        rows = position[source]
        return {
            "init_betas": own["betas"][rows],
            "init_global_orient": own["global_orient"][rows],
            "init_body_pose": own["body_pose"][rows],
            "init_camera": own["camera"][rows],
            "init_filled": ~usable,
        }

    def _fallback(self, image_size: tuple[int, int]) -> dict[str, np.ndarray]:
        """The mean parameters with the mean camera centred in the image (per-frame arrays)."""
        model = self.model
        width, height = image_size
        with torch.no_grad():
            rotmats, betas, camera_norm = split_params(model.mean_params[None].float().cpu())
            centre = torch.tensor([[width / 2.0, height / 2.0]])
            box = torch.tensor([_FALLBACK_BOX * height if height > 0 else 1.0])
            camera = denormalize_camera(camera_norm, centre, box)
            axis_angle = rotmat_to_axis_angle(rotmats[0]).numpy().astype(np.float32)
        return {
            "init_betas": betas.numpy()[0].astype(np.float32),
            "init_global_orient": axis_angle[0],
            "init_body_pose": axis_angle[1:].reshape(-1),
            "init_camera": camera.numpy()[0].astype(np.float32),
        }


def _empty_result(num_frames: int) -> dict[str, np.ndarray]:
    return {
        "init_betas": np.zeros((num_frames, 10), np.float32),
        "init_global_orient": np.zeros((num_frames, 3), np.float32),
        "init_body_pose": np.zeros((num_frames, 69), np.float32),
        "init_camera": np.zeros((num_frames, 3), np.float32),
        "init_filled": np.zeros(num_frames, bool),
    }


def _image_size(batch: dict[str, Any], i: int) -> tuple[int, int]:
    """(width, height) of item ``i`` from the first size columns present and positive, else (0, 0)."""
    for w_name, h_name in _SIZE_COLUMNS:
        if w_name in batch and h_name in batch:
            try:
                width, height = int(batch[w_name][i]), int(batch[h_name][i])
            except (TypeError, ValueError):
                continue
            if width > 0 and height > 0:
                return width, height
    return 0, 0


# --------------------------------------------------------------------------- training sources


def motion_library_frames(n: int, *, seed: int, frames_per_clip: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 69)`` body poses and ``(n, 3)`` global orientations: random frames of random motions.

    Like :func:`labelmill.operators.synth.motion.sample_poses`, but keeps each frame's global
    orientation, whose lean and roll belong with the pose (a squat leans forward). Each group of
    ``frames_per_clip`` frames shares one motion draw, at random times within 20 seconds.
    """
    from labelmill.operators.synth.motion import make_motion_clip

    if n < 0 or frames_per_clip < 1:
        raise ValueError(f"motion_library_frames needs n >= 0 and frames_per_clip >= 1, got {n}, {frames_per_clip}")
    rng = np.random.default_rng(seed)
    body_pose, global_orient = np.zeros((n, 69)), np.zeros((n, 3))
    for start in range(0, n, frames_per_clip):
        count = min(frames_per_clip, n - start)
        clip = make_motion_clip(rng, t=np.sort(rng.uniform(0.0, 20.0, size=count)))
        body_pose[start : start + count] = clip.body_pose
        global_orient[start : start + count] = clip.global_orient
    return body_pose, global_orient


def synthetic_detector_noise(
    clean: np.ndarray,
    sigma_px: np.ndarray,
    rng: np.random.Generator,
    *,
    width: int,
    height: int,
    drop_prob: float,
    low_conf_prob: float,
) -> np.ndarray:
    """The synthetic world's detector model (:func:`simulate_detections`) without outlier or missed
    frames: ``clean (B, 17, 2)`` pixels, noise std ``sigma_px (B,)`` -> ``(B, 17, 3)``."""
    from labelmill.operators.synth.config import SynthConfig
    from labelmill.operators.synth.detector_noise import simulate_detections

    # keypoint_sigma = 1: the "person height" passed to simulate_detections is the noise std itself
    cfg = SynthConfig(
        width=int(width), height=int(height), keypoint_sigma=1.0, drop_prob=drop_prob, low_conf_prob=low_conf_prob,
        outlier_frame_prob=0.0, miss_prob=0.0,
    )  # fmt: skip
    return simulate_detections(np.asarray(clean, np.float64), np.asarray(sigma_px, np.float64), rng, cfg).keypoints


def synthetic_training_sources() -> TrainingSources:
    """Training sources of the default initialiser: the motion library and the synthetic detector noise."""
    return TrainingSources(sample_frames=motion_library_frames, detector_noise=synthetic_detector_noise)


def load_default_initializer(*, train_if_missing: bool = True) -> KeypointInitializer:
    """The embedded default initialiser; when its weights are missing, train them now (default
    recipe, a few minutes on a CPU) and cache them at :func:`cached_weights_path`."""
    try:
        return KeypointInitializer.default()
    except FileNotFoundError as exc:
        if not train_if_missing:
            raise
        path = cached_weights_path()
        log.warning("%s. Training the default keypoint initialiser now (a few minutes on a CPU); "
                    "it will be cached at %s", exc, path)  # fmt: skip
    model = train_initializer(synthetic_training_sources(), config=InitializerTrainingConfig())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(str(path))
        log.info("cached the trained keypoint initialiser at %s", path)
    except OSError as exc:
        log.warning("could not cache the trained keypoint initialiser at %s: %s", path, exc)
    return model
