"""`SynthConfig`: every knob of the synthetic ground-truth world (documented in docs/synthetic_world.md)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from labelmill.operators.synth.motion import MOTION_NAMES

__all__ = ["SynthConfig"]


@dataclasses.dataclass
class SynthConfig:
    """Knobs of :func:`labelmill.operators.synth.corpus.write_synthetic_corpus`.

    Fractions are in [0, 1]; "person height" is the standing person's height in pixels at the
    video's mean zoom.
    """

    # --- corpus size and format
    num_videos: int = 4  # videos to write
    num_frames: int = 60  # frames per video
    seed: int = 0  # master seed; video i uses SeedSequence(seed, spawn_key=(i,))
    fps: int = 30  # frames per second of the mp4 (constant) and of motion time
    width: int = 320  # frame width in pixels (even: H.264 4:2:0)
    height: int = 240  # frame height in pixels (even)
    max_people: int = 2  # most people in a frame, the person of interest included (1: no distractors)
    val_fraction: float = 0.1  # share of videos in split "val" (by a hash of the video id)
    test_fraction: float = 0.1  # share of videos in split "test"
    clip_start_max_s: int = 290  # time_start of a clip in its notional source video is in [0, this]
    coordinate_decimals: int = 4  # decimals of keypoint coordinates/confidences in keypoints/*.json
    # --- motion
    motions: list[str] = dataclasses.field(default_factory=lambda: list(MOTION_NAMES))  # labels to draw from
    blend_prob: float = 0.35  # chance a video adds a second motion's upper-body channels
    blend_weight_min: float = 0.3  # weight range of that second motion
    blend_weight_max: float = 0.6
    speed_min: float = 0.8  # tempo multiplier range
    speed_max: float = 1.25
    amplitude_min: float = 0.7  # excursion multiplier range
    amplitude_max: float = 1.15
    style_noise: float = 0.05  # radians: slow random drift added to spine, neck and arm channels
    beta_std: float = 1.0  # std of the 10 shape coefficients (normal, clipped to +-beta_clip)
    beta_clip: float = 2.5
    body_model_path: str | None = None  # SMPL .pkl/.npz; null: the embedded default body
    # --- camera (scaled orthographic, per frame)
    person_height_min: float = 0.45  # standing person's height as a fraction of frame height
    person_height_max: float = 0.75
    zoom_amplitude: float = 0.08  # relative smooth zoom excursion around the video's mean scale
    pan_amplitude: float = 0.12  # smooth pan excursion, fraction of frame width (half that vertically)
    camera_elevation_max_deg: float = 12.0  # camera above (+) / below (-) the person, folded into global_orient
    # --- detector-like 2D keypoints
    keypoint_sigma: float = 0.012  # Gaussian noise std per coordinate, fraction of person height
    confidence_min: float = 0.55  # confidence of a normal joint ~ U(confidence_min, 1)
    drop_prob: float = 0.04  # chance a joint is not detected (x = y = confidence = 0)
    low_conf_prob: float = 0.08  # chance a joint is a low-confidence guess
    low_conf_max: float = 0.35  # its confidence ~ U(0.05, low_conf_max) ...
    low_conf_sigma_scale: float = 3.0  # ... and its noise std is this many times keypoint_sigma
    outlier_frame_prob: float = 0.03  # chance a frame's detection of the person is grossly wrong
    outlier_displacement: float = 0.35  # displacement outliers move the skeleton this many person heights
    miss_prob: float = 0.02  # chance the person of interest is not detected in a frame
    distractor_presence: float = 0.6  # each distractor is in the scene for this share of the video (one span)
    distractor_miss_prob: float = 0.05  # chance a present distractor is not detected in a frame
    distractor_scale_min: float = 0.6  # distractor size relative to the person of interest
    distractor_scale_max: float = 1.1
    # --- video encoding (PyAV)
    codec: Literal["libx264", "mpeg4"] = "libx264"  # libx264 -> H.264; mpeg4 -> MPEG-4 Part 2
    crf: int = 23  # libx264 constant rate factor (quality); mpeg4 uses qscale = max(2, crf // 6)
    preset: str = "veryfast"  # libx264 preset

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, what: str) -> None:
            if not ok:
                raise ValueError(f"synth.{field} {what}, got {getattr(self, field)!r}")

        for f in ("num_videos", "num_frames", "fps", "max_people"):
            need(getattr(self, f) >= 1, f, "must be >= 1")
        need(self.seed >= 0, "seed", "must be >= 0")
        for f in ("width", "height"):
            need(getattr(self, f) >= 32 and getattr(self, f) % 2 == 0, f, "must be an even number >= 32")
        need(self.clip_start_max_s >= 0, "clip_start_max_s", "must be >= 0")
        need(0 <= self.coordinate_decimals <= 8, "coordinate_decimals", "must be in [0, 8]")
        need(len(self.motions) > 0, "motions", "must name at least one motion")
        unknown = [m for m in self.motions if m not in MOTION_NAMES]
        need(not unknown, "motions", f"has unknown names {unknown}; known: {', '.join(MOTION_NAMES)}")
        for f in (
            "val_fraction", "test_fraction", "blend_prob", "drop_prob", "low_conf_prob", "outlier_frame_prob",
            "miss_prob", "distractor_presence", "distractor_miss_prob", "confidence_min", "zoom_amplitude",
            "pan_amplitude",
        ):  # fmt: skip
            need(0.0 <= getattr(self, f) <= 1.0, f, "must be in [0, 1]")
        need(self.val_fraction + self.test_fraction <= 1.0, "test_fraction", "plus val_fraction must be <= 1")
        need(self.zoom_amplitude < 0.5, "zoom_amplitude", "must be < 0.5")
        for lo, hi in (
            ("blend_weight_min", "blend_weight_max"), ("speed_min", "speed_max"), ("amplitude_min", "amplitude_max"),
            ("person_height_min", "person_height_max"), ("distractor_scale_min", "distractor_scale_max"),
        ):  # fmt: skip
            need(getattr(self, lo) > 0, lo, "must be > 0")
            need(getattr(self, hi) >= getattr(self, lo), hi, f"must be >= {lo}")
        need(self.person_height_max <= 1.0, "person_height_max", "must be <= 1")
        need(self.amplitude_max <= 1.5, "amplitude_max", "must be <= 1.5 (joint limits)")
        need(0.0 <= self.style_noise <= 0.3, "style_noise", "must be in [0, 0.3] radians")
        need(self.beta_std >= 0, "beta_std", "must be >= 0")
        need(self.beta_clip > 0, "beta_clip", "must be > 0")
        need(0.0 <= self.camera_elevation_max_deg <= 45.0, "camera_elevation_max_deg", "must be in [0, 45]")
        need(self.keypoint_sigma >= 0, "keypoint_sigma", "must be >= 0")
        need(0.05 <= self.low_conf_max <= 1.0, "low_conf_max", "must be in [0.05, 1]")
        need(self.low_conf_sigma_scale >= 0, "low_conf_sigma_scale", "must be >= 0")
        need(self.outlier_displacement >= 0, "outlier_displacement", "must be >= 0")
        need(0 <= self.crf <= 51, "crf", "must be in [0, 51]")
        presets = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
        need(self.preset in presets, "preset", f"must be one of {', '.join(presets)}")
