"""The embedded default body: SMPL's format, a closed human-shaped mesh, joints and landmarks in place."""

from __future__ import annotations

import numpy as np
import pytest
from smplx.joint_names import JOINT_NAMES
from smplx.vertex_ids import vertex_ids

from labelmill.models import coco
from labelmill.models.default_body import SHAPE_DIRECTIONS, default_body_arrays, save_body_npz

LANDMARKS = vertex_ids["smplh"]
J = {name: i for i, name in enumerate(coco.SMPL_JOINT_NAMES)}


@pytest.fixture(scope="module")
def body() -> dict[str, np.ndarray]:
    return default_body_arrays()


@pytest.fixture(scope="module")
def joints(body) -> np.ndarray:
    return body["J_regressor"] @ body["v_template"]


def shaped(body, betas: dict[int, float]) -> np.ndarray:
    coefficients = np.zeros(body["shapedirs"].shape[-1])
    for index, value in betas.items():
        coefficients[index] = value
    return body["v_template"] + body["shapedirs"] @ coefficients


def test_arrays_have_smpl_names_shapes_and_tree(body):
    assert body["v_template"].shape == (6890, 3)
    assert body["f"].shape == (13776, 3) and np.issubdtype(body["f"].dtype, np.integer)
    assert body["kintree_table"].shape == (2, 24)
    assert body["kintree_table"][0].tolist() == list(coco.SMPL_PARENTS)
    assert body["J_regressor"].shape == (24, 6890)
    assert body["weights"].shape == (6890, 24)
    assert body["shapedirs"].shape == (6890, 3, 10)
    assert body["posedirs"].shape == (6890, 3, 207)
    assert len(SHAPE_DIRECTIONS) == 10
    assert coco.SMPL_JOINT_NAMES[:22] == tuple(JOINT_NAMES[:22])


def test_weights_and_regressor_are_convex(body):
    for name in ("weights", "J_regressor"):
        rows = body[name].sum(axis=1)
        np.testing.assert_allclose(rows, 1.0, atol=1e-12, err_msg=name)
        assert body[name].min() >= 0.0, name


def test_mesh_is_one_closed_oriented_surface(body):
    faces = body["f"]
    assert faces.min() == 0 and faces.max() == 6889
    assert len(np.unique(faces)) == 6890  # every vertex is used
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    directed = {tuple(e) for e in edges.tolist()}
    assert len(directed) == len(edges)  # no directed edge twice: consistently oriented
    assert all((b, a) in directed for a, b in directed)  # every edge has its twin: closed
    assert 6890 - len(directed) // 2 + len(faces) == 2  # Euler characteristic of a sphere, like SMPL
    v = body["v_template"]
    tri = v[faces]
    volume = np.einsum("ij,ij->", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])) / 6.0
    assert volume > 0.03  # outward faces; a body of roughly 60-80 litres encloses positive volume


def test_rest_pose_is_smpl_like_t_pose(body, joints):
    v = body["v_template"]
    height = v[:, 1].max() - v[:, 1].min()
    assert 1.5 <= height <= 1.9
    assert np.linalg.norm(joints[J["pelvis"]]) < 0.3  # pelvis near the origin like SMPL
    chain = ["head", "neck", "spine3", "spine2", "spine1", "pelvis", "left_hip", "left_knee", "left_ankle"]
    heights = [joints[J[name], 1] for name in chain]
    assert heights == sorted(heights, reverse=True)
    assert joints[J["left_foot"], 2] > joints[J["left_ankle"], 2] + 0.05  # feet point forward (+z)
    # Arms out horizontally along +x (subject's left) in order shoulder < elbow < wrist < hand.
    arm = [joints[J[f"left_{n}"]] for n in ("collar", "shoulder", "elbow", "wrist", "hand")]
    assert all(a[0] < b[0] for a, b in zip(arm, arm[1:]))
    assert all(abs(p[1] - joints[J["left_shoulder"], 1]) < 0.05 for p in arm)
    assert 1.4 < 2 * joints[J["left_hand"], 0] < 1.7  # finger span
    # Left/right mirror images.
    for name in coco.SMPL_JOINT_NAMES:
        if name.startswith("left_"):
            right = joints[J["right_" + name[5:]]]
            np.testing.assert_allclose(joints[J[name]] * [-1, 1, 1], right, atol=1e-9, err_msg=name)
            assert joints[J[name], 0] > 0.05


def test_landmark_vertices_sit_on_the_right_body_parts(body, joints):
    v = body["v_template"]

    def at(name: str) -> np.ndarray:
        return v[LANDMARKS[name]]

    head, neck = joints[J["head"]], joints[J["neck"]]
    nose = at("nose")
    assert nose[1] > neck[1] and nose[2] > head[2] + 0.08  # above the neck, in front of the head joint
    assert np.abs(nose[0]) < 1e-9 and nose[2] == pytest.approx(v[v[:, 1] > 0.3, 2].max())  # the tip of the face
    for eye in ("leye", "reye"):
        assert at(eye)[1] > nose[1] + 0.01 and at(eye)[2] > head[2] + 0.05
    assert at("leye")[0] > 0.02 and at("reye")[0] < -0.02
    assert at("lear")[0] > at("leye")[0] + 0.03 and at("rear")[0] < at("reye")[0] - 0.03
    assert at("lear")[2] < at("leye")[2] - 0.05  # ears are behind the eyes
    for side, prefix in (("left", "L"), ("right", "R")):
        ankle = joints[J[f"{side}_ankle"]]
        heel, big, small = at(f"{prefix}Heel"), at(f"{prefix}BigToe"), at(f"{prefix}SmallToe")
        assert heel[2] < ankle[2] - 0.03 and heel[1] < ankle[1]  # behind and below the ankle
        assert big[2] > ankle[2] + 0.12 and small[2] > ankle[2] + 0.1  # toes in front
        assert abs(big[0]) < abs(small[0])  # big toe on the inside
        wrist = joints[J[f"{side}_wrist"]]
        for finger in ("thumb", "index", "middle", "ring", "pinky"):
            tip = at(side[0] + finger)
            assert abs(tip[0]) > abs(wrist[0]) + 0.05 and np.sign(tip[0]) == np.sign(wrist[0]), finger


def test_stature_direction_changes_height_monotonically(body):
    heights = [np.ptp(shaped(body, {0: b})[:, 1]) for b in np.linspace(-3, 3, 7)]
    assert np.all(np.diff(heights) > 0.05)


def test_each_shape_direction_does_what_it_says(body):
    base = body["v_template"]
    reg = body["J_regressor"]
    j0 = reg @ base

    def joints_for(betas):
        return reg @ shaped(body, betas)

    def span(j, a, b):
        return np.linalg.norm(j[J[a]] - j[J[b]])

    width = lambda v, lo, hi: np.ptp(v[(v[:, 1] > lo) & (v[:, 1] < hi) & (np.abs(v[:, 0]) < 0.2), 0])  # noqa: E731
    j = joints_for({2: 1.0})
    assert span(j, "left_hip", "left_ankle") > span(j0, "left_hip", "left_ankle") + 0.03
    assert span(j, "pelvis", "neck") == pytest.approx(span(j0, "pelvis", "neck"))
    j = joints_for({3: 1.0})
    assert span(j, "left_shoulder", "left_wrist") > span(j0, "left_shoulder", "left_wrist") + 0.02
    j = joints_for({4: 1.0})
    assert span(j, "pelvis", "neck") > span(j0, "pelvis", "neck") + 0.02
    j = joints_for({5: 1.0})
    assert span(j, "left_shoulder", "right_shoulder") > span(j0, "left_shoulder", "right_shoulder") + 0.02
    j = joints_for({6: 1.0})
    assert span(j, "left_hip", "right_hip") > span(j0, "left_hip", "right_hip") + 0.02
    heavy = shaped(body, {1: 1.0})
    assert width(heavy, -0.1, 0.0) > 1.1 * width(base, -0.1, 0.0)  # waist
    np.testing.assert_allclose(reg @ heavy, j0, atol=1e-9)  # girth does not move the bones
    assert np.ptp(shaped(body, {7: 1.0})[base[:, 1] > 0.32, 1]) > np.ptp(base[base[:, 1] > 0.32, 1])
    belly = shaped(body, {8: 1.0})
    assert belly[:, 2].max() >= base[:, 2].max() and (belly - base)[:, 2].max() > 0.02
    muscle = shaped(body, {9: 1.0}) - base
    assert np.linalg.norm(muscle[np.abs(base[:, 0]) > 0.3], axis=1).max() > 0.004  # arms thicker
    # Ten independent directions.
    flat = body["shapedirs"].reshape(-1, 10)
    assert np.linalg.matrix_rank(flat) == 10


def test_pose_correctives_are_nonzero_for_every_joint_and_the_face(body):
    posedirs = body["posedirs"]
    for joint in range(23):
        block = posedirs[:, :, 9 * joint: 9 * joint + 9]
        assert np.abs(block).max() > 1e-3, coco.SMPL_JOINT_NAMES[joint + 1]
        assert np.abs(block[:, :, [1, 2, 3, 5, 6, 7]]).max() > 1e-4  # off-diagonal entries too
    face = list(coco.face_landmark_vertex_ids())
    assert np.abs(posedirs[face]).max() > 1e-3  # the COCO face points move with the correctives
    assert np.abs(posedirs).max() < 0.05  # small


def test_generation_is_deterministic_cached_and_read_only(body):
    again = default_body_arrays()
    assert again is not body and again["v_template"] is body["v_template"]  # one build per process
    with pytest.raises(ValueError):
        again["v_template"][0, 0] = 1.0
    from labelmill.models import default_body

    rebuilt = default_body._default_body.__wrapped__()
    for key, value in body.items():
        np.testing.assert_array_equal(rebuilt[key], value, err_msg=key)


def test_save_body_npz_round_trips(tmp_path, body):
    path = tmp_path / "body.npz"
    save_body_npz(str(path))
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(body)
        for key in body:
            np.testing.assert_array_equal(npz[key], body[key])
    assert [p.name for p in tmp_path.iterdir()] == ["body.npz"]  # no temporary left behind
