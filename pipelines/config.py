"""Pipeline configs: one typed dataclass tree per pipeline, composed from component sections.

Each section is the config dataclass of the component it configures, so a component can be
built in a test from its own section without any pipeline config.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from labelmill.infra.config import ConfigError
from labelmill.infra.engines.config import EngineConfig
from labelmill.models.body_model import BodyModelConfig
from labelmill.models.pose3d_fit import FitConfig
from labelmill.models.pose_prior import PriorConfig
from labelmill.operators.common.decode import DecodeConfig
from labelmill.operators.pose3d.fit_quality import FilterConfig
from labelmill.operators.pose3d.keypoint_init import KeypointInitConfig
from labelmill.operators.pose3d.keypoints_backend import KeypointsConfig
from labelmill.operators.pose3d.noisy_init import NoisyInitConfig
from labelmill.operators.pose3d.samples import Pose3dSampleConfig
from labelmill.infra.formats.shards import ShardConfig
from labelmill.infra.segmentation_corpus import SegmentationInputConfig
from labelmill.operators.segmentation.box_labels import BoxLabelConfig
from labelmill.operators.segmentation.crf_refine import SegmentationCRFConfig
from labelmill.operators.segmentation.images import ImageConfig
from labelmill.operators.segmentation.samples import SegmentationFilterConfig
from labelmill.operators.segmentation.stuff import StuffConfig
from labelmill.operators.synth.config import SynthConfig
from labelmill.operators.pose3d.tracking import TrackingConfig


@dataclass
class Pose3dConfig:
    """pose3d: decode -> keypoints -> track -> per-frame init -> bundle adjustment -> filter -> shards."""

    seed: int = 0  # global seed for anything random in the run
    engine: EngineConfig = field(default_factory=EngineConfig)  # local | ray | beam, resources per stage
    decode: DecodeConfig = field(default_factory=DecodeConfig)  # fps, max side, JPEG quality
    keypoints: KeypointsConfig = field(default_factory=KeypointsConfig)  # 2D keypoint backend
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # person-of-interest tracking
    body_model: BodyModelConfig = field(default_factory=BodyModelConfig)  # SMPL file or embedded stand-in
    prior: PriorConfig = field(default_factory=PriorConfig)  # GMM pose prior
    fit: FitConfig = field(default_factory=FitConfig)  # energy weights, windows, solver
    filter: FilterConfig = field(default_factory=FilterConfig)  # keep/drop thresholds
    keypoint_init: KeypointInitConfig = field(default_factory=KeypointInitConfig)  # embedded per-frame initialiser
    samples: Pose3dSampleConfig = field(default_factory=Pose3dSampleConfig)  # sample fields
    shards: ShardConfig = field(default_factory=ShardConfig)  # shard size and naming
    write_fits: bool = True  # also write fits.json: where every fitted frame's fit and filter results are
    init: NoisyInitConfig = field(default_factory=NoisyInitConfig)  # HMR-like init noise (synthetic experiments)
    synth: SynthConfig = field(default_factory=SynthConfig)  # synthetic world (demo, eval, bench)


@dataclass
class SegmentationConfig:
    """segmentation: corpus (COCO / VOC) -> decode -> things from boxes -> stuff from tags -> [CRF] -> filter + samples -> shards."""

    seed: int = 0  # global seed (GrabCut's own seed is things.seed)
    engine: EngineConfig = field(default_factory=EngineConfig)  # local | ray | beam, resources per stage
    input: SegmentationInputConfig = field(default_factory=SegmentationInputConfig)  # boxes and tags from annotations
    image: ImageConfig = field(default_factory=ImageConfig)  # max side, JPEG quality
    things: BoxLabelConfig = field(default_factory=BoxLabelConfig)  # GrabCut + second cue per box
    stuff: StuffConfig = field(default_factory=StuffConfig)  # Grad-CAM of a tag classifier, under the things
    crf: SegmentationCRFConfig = field(default_factory=SegmentationCRFConfig)  # dense CRF refinement (off)
    filter: SegmentationFilterConfig = field(default_factory=SegmentationFilterConfig)  # quality filter
    shards: ShardConfig = field(default_factory=ShardConfig)  # shard size and naming


PIPELINE_CONFIGS: dict[str, type] = {"pose3d": Pose3dConfig, "segmentation": SegmentationConfig}


def config_class(pipeline: str) -> type:
    try:
        return PIPELINE_CONFIGS[pipeline]
    except KeyError:
        raise ConfigError(f"unknown pipeline {pipeline!r}; known: {', '.join(sorted(PIPELINE_CONFIGS))}") from None
