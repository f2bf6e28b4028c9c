"""One synthetic video's world: people, motions, cameras, detections, and its frames.

:func:`synthesize_video` draws everything about video ``i`` of a corpus seeded by ``cfg.seed``
except its pixels; :func:`render_frames` draws them. Video ``i`` draws from
``SeedSequence(cfg.seed, spawn_key=(i, stream, sub))`` with one stream per concern (see
``_STREAMS``; ``sub`` numbers distractors), so video ``i`` does not depend on how many videos
are made, and changing e.g. the noise knobs does not change the motion.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
from typing import TYPE_CHECKING, Iterator

import cv2
import numpy as np
import torch

from labelmill.operators.synth.camera import (
    CameraPath,
    compose_cameras,
    distractor_cameras,
    project,
    sample_camera_path,
)
from labelmill.operators.synth.config import SynthConfig
from labelmill.operators.synth.detector_noise import Detections, shuffle_people, simulate_detections
from labelmill.operators.synth.motion import MotionClip, ground_offsets, make_motion_clip
from labelmill.operators.synth.render import (
    Appearance,
    Backdrop,
    PersonView,
    draw_frame,
    make_backdrop,
    sample_appearance,
)

if TYPE_CHECKING:
    from labelmill.models.body_model import BodyModel

__all__ = [
    "SyntheticPerson",
    "SyntheticVideo",
    "synthesize_video",
    "render_frames",
    "video_id_for",
    "split_for",
    "single_threaded",
]

_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# Independent random streams of one video (spawn_key = (video index, stream)).
_STREAMS = {"meta": 0, "person": 1, "camera": 2, "noise": 3, "distractors": 4, "look": 5, "shuffle": 6}
_FOOT_JOINTS = (7, 8, 10, 11)


def _rng(seed: int, video_index: int, stream: str, sub: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(video_index, _STREAMS[stream], sub)))


@dataclasses.dataclass(frozen=True)
class SyntheticPerson:
    """One person over one video. Shapes: T frames."""

    motion: MotionClip
    betas: np.ndarray  # (10,)
    stature: float  # metres, standing height (body-model vertices at rest)
    camera: np.ndarray  # (T, 3) s, u_x, u_y: maps body-model points (no translation) to pixels
    translation: np.ndarray  # (T, 3) metres: root translation in the world (folded into camera)
    joints3d: np.ndarray  # (T, 24, 3) body-model joints, metres, no translation
    keypoints3d: np.ndarray  # (T, 17, 3) COCO-17, metres, no translation
    joints2d: np.ndarray  # (T, 24, 2) clean projections, pixels
    keypoints2d: np.ndarray  # (T, 17, 2) clean projections, pixels
    detections: Detections
    scale_factor: float  # size relative to the person of interest (1 for it)
    present: np.ndarray  # (T,) bool: in the scene


@dataclasses.dataclass(frozen=True)
class SyntheticVideo:
    """Everything about one synthetic video except its pixels (see :func:`render_frames`)."""

    index: int
    video_id: str
    time_start: int
    time_end: int
    split: str
    people: list[SyntheticPerson]  # people[0] is the person of interest
    background_camera: np.ndarray  # (T, 3) s, u_x, u_y of the world (backdrop)
    camera_path: CameraPath
    backdrop: Backdrop
    appearances: list[Appearance]  # one per person
    order: list[list[int]]  # per frame: indices into people, in detection output order
    poi_index: np.ndarray  # (T,) int16: position of the person of interest in the frame's detections, -1 missed

    @property
    def label(self) -> str:
        return self.people[0].motion.label

    @property
    def filename(self) -> str:
        return f"{self.video_id}_{self.time_start:06d}_{self.time_end:06d}.mp4"


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch and OpenCV on one thread inside the block, restoring their settings after.

    Synthesis works on tiny tensors and images, where intra-op threads only add
    synchronisation; on a busy machine they were measured 70x slower (body-model joints of 120
    frames: 4 ms on one thread, 280 ms on two with other processes running).
    """
    torch_threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        cv2.setNumThreads(cv_threads)


# ----------------------------------------------------------------------------- ids and splits


def video_id_for(seed: int, video_index: int) -> str:
    """An 11-character YouTube-like id (``[A-Za-z0-9_-]``) of video ``video_index``."""
    digits = _rng(seed, video_index, "meta").integers(0, len(_ID_ALPHABET), 11)
    return "".join(_ID_ALPHABET[int(d)] for d in digits)


def split_for(video_id: str, *, val_fraction: float, test_fraction: float) -> str:
    """"test", "val" or "train" from the first 8 bytes of sha256(id) read as a fraction in [0, 1)."""
    h = int.from_bytes(hashlib.sha256(video_id.encode("ascii")).digest()[:8], "big") / 2.0**64
    if h < test_fraction:
        return "test"
    if h < test_fraction + val_fraction:
        return "val"
    return "train"


# ----------------------------------------------------------------------------- synthesis


def _body_joints(
    body_model: "BodyModel", betas: np.ndarray, global_orient: np.ndarray, body_pose: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Joints ``(T, 24, 3)`` and COCO-17 keypoints ``(T, 17, 3)`` (float64) from float32 inputs."""
    with torch.no_grad():
        out = body_model.joints_only(
            torch.as_tensor(betas[None], dtype=torch.float32),
            torch.as_tensor(global_orient, dtype=torch.float32),
            torch.as_tensor(body_pose, dtype=torch.float32),
        )
    return out.joints.double().numpy(), out.keypoints3d.double().numpy()


def _stature(body_model: "BodyModel", betas: np.ndarray) -> float:
    """Standing height in metres: vertical extent of the rest-pose mesh."""
    with torch.no_grad():
        out = body_model.forward(
            torch.as_tensor(betas[None], dtype=torch.float32),
            torch.zeros(1, 3),
            torch.zeros(1, 69),
            return_vertices=True,
        )
    heights = out.vertices[0, :, 1]
    return float(heights.max() - heights.min())


def _betas(rng: np.random.Generator, cfg: SynthConfig, num_betas: int) -> np.ndarray:
    return np.clip(rng.standard_normal(num_betas) * cfg.beta_std, -cfg.beta_clip, cfg.beta_clip)


def _make_motion(rng: np.random.Generator, cfg: SynthConfig, t: np.ndarray, elevation: float) -> MotionClip:
    return make_motion_clip(
        rng,
        t=t,
        motion_names=cfg.motions,
        blend_prob=cfg.blend_prob,
        blend_weight_range=(cfg.blend_weight_min, cfg.blend_weight_max),
        speed_range=(cfg.speed_min, cfg.speed_max),
        amplitude_range=(cfg.amplitude_min, cfg.amplitude_max),
        style_amplitude=cfg.style_noise,
        camera_elevation=elevation,
    )


def _presence(rng: np.random.Generator, num_frames: int, fraction: float) -> np.ndarray:
    """(T,) bool: one contiguous span covering ``fraction`` of the video at a random start."""
    length = int(round(fraction * num_frames))
    start = int(rng.integers(0, num_frames - length + 1))
    present = np.zeros(num_frames, bool)
    present[start : start + length] = True
    return present


def synthesize_video(index: int, cfg: SynthConfig, body_model: "BodyModel") -> SyntheticVideo:
    """Draw video ``index`` of the corpus seeded by ``cfg.seed`` (no pixels yet)."""
    num_frames, width, height = cfg.num_frames, cfg.width, cfg.height
    t = np.arange(num_frames) / cfg.fps
    num_betas = int(getattr(body_model, "num_betas", 10))
    video_id = video_id_for(cfg.seed, index)
    meta = _rng(cfg.seed, index, "meta", 1)
    time_start = int(meta.integers(0, cfg.clip_start_max_s + 1))
    time_end = time_start + max(1, math.ceil(num_frames / cfg.fps))

    person_rng = _rng(cfg.seed, index, "person")
    camera_rng = _rng(cfg.seed, index, "camera")
    betas = _betas(person_rng, cfg, num_betas)
    stature = _stature(body_model, betas)
    path = sample_camera_path(
        camera_rng,
        t=t,
        width=width,
        height=height,
        stature_m=stature,
        person_height_range=(cfg.person_height_min, cfg.person_height_max),
        zoom_amplitude=cfg.zoom_amplitude,
        pan_amplitude=cfg.pan_amplitude,
        elevation_max_rad=math.radians(cfg.camera_elevation_max_deg),
    )
    motion = _make_motion(person_rng, cfg, t, path.elevation)
    joints, keypoints = _body_joints(body_model, betas, motion.global_orient, motion.body_pose)
    translation = motion.travel.copy()
    translation[:, 1] = ground_offsets(joints, motion.airborne, foot_joints=_FOOT_JOINTS)
    camera, background = compose_cameras(
        path,
        translation=translation,
        width=width,
        height=height,
        stature_m=stature,
        headroom_m=float(motion.airborne.max()),
    )
    noise_rng = _rng(cfg.seed, index, "noise")
    people = [
        _finish_person(
            motion, betas, stature, camera, translation, joints, keypoints, noise_rng, cfg,
            scale_factor=1.0, present=np.ones(num_frames, bool), miss_prob=cfg.miss_prob,
        )
    ]  # fmt: skip

    for k in range(1, cfg.max_people):
        d_rng = _rng(cfg.seed, index, "distractors", k)
        d_betas = _betas(d_rng, cfg, num_betas)
        d_stature = _stature(body_model, d_betas)
        d_motion = _make_motion(d_rng, cfg, t, path.elevation)
        d_joints, d_keypoints = _body_joints(body_model, d_betas, d_motion.global_orient, d_motion.body_pose)
        d_translation = d_motion.travel.copy()
        d_translation[:, 1] = ground_offsets(d_joints, d_motion.airborne, foot_joints=_FOOT_JOINTS)
        factor = float(d_rng.uniform(cfg.distractor_scale_min, cfg.distractor_scale_max))
        side = 1.0 if d_rng.random() < 0.5 else -1.0
        world_x = side * d_rng.uniform(0.3, 0.5) * width / float(path.scale.mean())
        present = _presence(d_rng, num_frames, cfg.distractor_presence)
        d_camera = distractor_cameras(
            background, scale_factor=factor, world_x=world_x, translation=d_translation, height=height
        )
        people.append(
            _finish_person(
                d_motion, d_betas, d_stature, d_camera, d_translation, d_joints, d_keypoints,
                _rng(cfg.seed, index, "noise", k), cfg,
                scale_factor=factor, present=present, miss_prob=cfg.distractor_miss_prob,
            )
        )  # fmt: skip

    order, poi_index = shuffle_people([p.detections for p in people], _rng(cfg.seed, index, "shuffle"))
    look_rng = _rng(cfg.seed, index, "look")
    backdrop = make_backdrop(look_rng)
    appearances = [sample_appearance(look_rng) for _ in people]
    return SyntheticVideo(
        index=index,
        video_id=video_id,
        time_start=time_start,
        time_end=time_end,
        split=split_for(video_id, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction),
        people=people,
        background_camera=background,
        camera_path=path,
        backdrop=backdrop,
        appearances=appearances,
        order=order,
        poi_index=poi_index,
    )


def _finish_person(
    motion: MotionClip,
    betas: np.ndarray,
    stature: float,
    camera: np.ndarray,
    translation: np.ndarray,
    joints: np.ndarray,
    keypoints: np.ndarray,
    noise_rng: np.random.Generator,
    cfg: SynthConfig,
    *,
    scale_factor: float,
    present: np.ndarray,
    miss_prob: float,
) -> SyntheticPerson:
    joints2d = project(joints, camera)
    keypoints2d = project(keypoints, camera)
    detections = simulate_detections(
        keypoints2d, camera[:, 0] * stature, noise_rng, cfg, present=present, miss_prob=miss_prob
    )
    return SyntheticPerson(
        motion=motion,
        betas=betas,
        stature=stature,
        camera=camera,
        translation=translation,
        joints3d=joints,
        keypoints3d=keypoints,
        joints2d=joints2d,
        keypoints2d=keypoints2d,
        detections=detections,
        scale_factor=scale_factor,
        present=present,
    )


def render_frames(video: SyntheticVideo, cfg: SynthConfig) -> Iterator[np.ndarray]:
    """Yield the video's ``(H, W, 3)`` uint8 BGR frames."""
    for t in range(cfg.num_frames):
        views = []
        for person, look in zip(video.people, video.appearances):
            if not person.present[t]:
                continue
            views.append(
                PersonView(
                    joints2d=person.joints2d[t],
                    keypoints2d=person.keypoints2d[t],
                    depth=person.joints3d[t, :, 2],
                    scale=float(person.camera[t, 0]),
                    facing=bool(person.keypoints3d[t, 0, 2] > person.joints3d[t, 15, 2]),
                    appearance=look,
                )
            )
        yield draw_frame(video.backdrop, video.background_camera[t], views, width=cfg.width, height=cfg.height)
