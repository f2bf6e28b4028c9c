"""`labelmill body show|export`: look at the body model; write the embedded default body as .npz.

    labelmill body show --out body.png [--path SMPL_NEUTRAL.pkl]
    labelmill body export --out body.npz
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

import numpy as np

from labelmill.infra.config import ConfigError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Panel:
    label: str
    rotations: dict[str, tuple[str, tuple[float, ...]]]  # joint name -> (euler axes, degrees)
    betas: dict[int, float]  # shape direction -> coefficient
    yaw_deg: float = 30.0


_A_POSE = {"left_shoulder": ("z", (-65.0,)), "right_shoulder": ("z", (65.0,))}
_PANELS = (
    _Panel("rest pose", {}, {}),
    _Panel("walking", {
        "left_hip": ("x", (-25.0,)), "left_knee": ("x", (10.0,)),
        "right_hip": ("x", (20.0,)), "right_knee": ("x", (35.0,)), "right_ankle": ("x", (10.0,)),
        "left_shoulder": ("xz", (20.0, -70.0)), "right_shoulder": ("xz", (-20.0, 70.0)),
        "left_elbow": ("y", (-20.0,)), "right_elbow": ("y", (20.0,)),
    }, {}, yaw_deg=60.0),
    _Panel("arms up", {
        "left_shoulder": ("z", (75.0,)), "right_shoulder": ("z", (-75.0,)),
        "left_elbow": ("z", (10.0,)), "right_elbow": ("z", (-10.0,)),
    }, {}),
    _Panel("squat", {
        "left_hip": ("xz", (-100.0, -8.0)), "right_hip": ("xz", (-100.0, 8.0)),
        "left_knee": ("x", (115.0,)), "right_knee": ("x", (115.0,)),
        "left_ankle": ("x", (-15.0,)), "right_ankle": ("x", (-15.0,)),
        "spine1": ("x", (15.0,)), "spine2": ("x", (10.0,)),
        "left_shoulder": ("y", (-75.0,)), "right_shoulder": ("y", (75.0,)),
    }, {}, yaw_deg=60.0),
    _Panel("beta0=+2 (taller)", _A_POSE, {0: 2.0}),
    _Panel("beta0=-2 (shorter)", _A_POSE, {0: -2.0}),
    _Panel("beta1=+2 (heavier)", _A_POSE, {1: 2.0}),
    _Panel("beta1=-2 (thinner)", _A_POSE, {1: -2.0}),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("body", help="look at the body model; export the embedded default body")
    sub = parser.add_subparsers(dest="body_command", metavar="ACTION")
    sub.required = True
    show = sub.add_parser(
        "show",
        help="render the body in a few poses and shapes, with COCO-17 keypoints, to a PNG",
        description="Render the embedded default body (or --path SMPL model) in a grid of poses and shapes "
        "with its COCO-17 keypoints drawn on top.",
    )
    show.add_argument("--out", required=True, help="PNG file to write (any fsspec URL)")
    show.add_argument("--path", default=None, help="SMPL .pkl/.npz to show instead of the embedded default body")
    show.add_argument("--panel-size", type=int, default=360, help="height of one panel in pixels (default 360)")
    show.set_defaults(handler=_show)
    export = sub.add_parser(
        "export",
        help="write the embedded default body as an SMPL-format .npz",
        description="Write the embedded default body's arrays (SMPL format) to an .npz that "
        "body_model.path can point to.",
    )
    export.add_argument("--out", required=True, help=".npz file to write (any fsspec URL)")
    export.set_defaults(handler=_export)


def _body_pose(rotations: dict[str, tuple[str, tuple[float, ...]]]) -> np.ndarray:
    """(69,) axis-angle body pose from joint name -> intrinsic Euler rotation in degrees."""
    from scipy.spatial.transform import Rotation

    from labelmill.models.coco import SMPL_JOINT_NAMES

    pose = np.zeros((23, 3))
    for name, (axes, degrees) in rotations.items():
        pose[SMPL_JOINT_NAMES.index(name) - 1] = Rotation.from_euler(axes.upper(), degrees, degrees=True).as_rotvec()
    return pose.reshape(-1)


def render_body_grid(body, *, panel_height: int = 360, columns: int = 4) -> np.ndarray:
    """A grid of panels (rest, walking, arms up, squat, shape +-2) as a BGR uint8 image."""
    import cv2
    import torch

    from labelmill.operators.common import mesh_render

    panel_width = int(round(panel_height * 0.75))
    supersample = 2
    hi_res = (panel_width * supersample, panel_height * supersample)
    scale = hi_res[1] / 2.15  # pixels per metre, the same in every panel
    tiles = []
    for panel in _PANELS:
        betas = torch.zeros(1, body.num_betas, dtype=body.dtype)
        for index, value in panel.betas.items():
            betas[0, index] = value
        body_pose = torch.as_tensor(_body_pose(panel.rotations), dtype=body.dtype)[None]
        with torch.no_grad():
            out = body(betas, torch.zeros(1, 3, dtype=body.dtype), body_pose, return_vertices=True)
        vertices = out.vertices[0].double().numpy()
        keypoints = out.keypoints3d[0].double().numpy()
        rotation = mesh_render.view_rotation(panel.yaw_deg, 10.0)
        camera = mesh_render.OrthoCamera.framing(vertices, rotation, scale, hi_res)
        tile = np.full((hi_res[1], hi_res[0], 3), 245, np.uint8)
        mesh_render.render_mesh(tile, vertices, body.faces, camera)
        tile = cv2.resize(tile, (panel_width, panel_height), interpolation=cv2.INTER_AREA)
        low_res = dataclasses.replace(camera, scale=camera.scale / supersample,
                                      centre=(camera.centre[0] / supersample, camera.centre[1] / supersample))
        mesh_render.draw_skeleton(tile, low_res.project(keypoints), radius=3, thickness=1)
        mesh_render.put_label(tile, panel.label)
        cv2.rectangle(tile, (0, 0), (panel_width - 1, panel_height - 1), (200, 200, 200), 1)
        tiles.append(tile)
    while len(tiles) % columns:
        tiles.append(np.full_like(tiles[0], 245))
    rows = [np.concatenate(tiles[i:i + columns], axis=1) for i in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)


def _show(args: argparse.Namespace) -> int:
    import cv2

    from labelmill.infra import storage
    from labelmill.models.body_model import BodyModel, BodyModelError

    if args.panel_size < 120:
        raise ConfigError(f"--panel-size must be at least 120 pixels, got {args.panel_size}")
    try:
        body = BodyModel(path=args.path)
    except BodyModelError as exc:
        raise ConfigError(str(exc)) from exc
    image = render_body_grid(body, panel_height=args.panel_size)
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("OpenCV could not encode the PNG")
    storage.write_bytes(args.out, png.tobytes())
    log.info("wrote %s (%dx%d) showing %s", args.out, image.shape[1], image.shape[0], body.source)
    return 0


def _export(args: argparse.Namespace) -> int:
    from labelmill.models.default_body import save_body_npz

    if not args.out.lower().endswith(".npz"):
        raise ConfigError(f"--out must end in .npz, got {args.out}")
    save_body_npz(args.out)
    log.info("wrote the embedded default body to %s", args.out)
    return 0
