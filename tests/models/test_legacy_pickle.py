"""The research-pickle reader admits exactly what SMPL / SMPLify files need and runs nothing else."""

import os
import pickle
import pickletools
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse

from labelmill.models.legacy_pickle import LegacyPickleError, load_legacy_pickle


class _Call:
    """A pickle that calls ``func(*args)`` when loaded (what an attacker writes)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _crafted(marker):
    """(name, pickle bytes): each would create ``marker`` (or run code) under a plain unpickler."""
    touch = f"open({str(marker)!r}, 'w').close()"
    np_testing = pytest.importorskip("numpy.testing._private.utils")
    return [
        ("os.system", pickle.dumps(_Call(os.system, f"touch {marker}"))),
        ("builtins.eval", pickle.dumps(_Call(eval, touch))),
        ("builtins.exec", pickle.dumps(_Call(exec, touch))),
        ("subprocess.call", pickle.dumps(_Call(subprocess.call, ["touch", str(marker)]))),
        ("numpy runstring", pickle.dumps(_Call(np_testing.runstring, touch, {}))),
        ("numpy.load with pickles", pickle.dumps(_Call(np.load, str(marker) + ".npy", None, True))),
        ("builtins.getattr", pickle.dumps(_Call(getattr, "", "join"))),
        # protocol 2 / Python 2 spelling, and a crafted GLOBAL nested inside an allowed container
        ("__builtin__.eval (protocol 0)", b"c__builtin__\neval\n(V" + touch.encode() + b"\ntR."),
        ("nested in a dict", pickle.dumps({"v_template": np.zeros(3), "x": [_Call(os.system, f"touch {marker}")]})),
    ]


def test_crafted_pickles_are_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "marker"
    for name, data in _crafted(marker):
        with pytest.raises(LegacyPickleError, match="not allowed|only numpy/scipy arrays"):
            load_legacy_pickle(data)
        assert not marker.exists(), f"{name}: the payload ran"
    # the same bytes do run under a plain unpickler: the check above is not vacuous
    pickle.loads(pickle.dumps(_Call(os.system, f"touch {marker}")))
    assert marker.exists()


def test_real_format_pickles_load(tmp_path):
    arrays = {"means": np.random.default_rng(0).normal(size=(8, 69)), "covars": np.stack([np.eye(69)] * 8),
              "weights": np.full(8, 1 / 8)}
    for protocol in (0, 2, 4, 5):
        loaded = load_legacy_pickle(pickle.dumps(arrays, protocol=protocol))
        assert all(np.array_equal(loaded[k], arrays[k]) for k in arrays), protocol
    sparse = {"J_regressor": scipy.sparse.csc_matrix(np.eye(4)), "f": np.arange(6, dtype=np.uint32).reshape(2, 3),
              "scale": np.float64(1.5), "bs_style": "lbs"}
    loaded = load_legacy_pickle(pickle.dumps(sparse, protocol=2))
    assert (loaded["J_regressor"] != sparse["J_regressor"]).nnz == 0 and loaded["scale"] == 1.5
    # a Python 2 pickle names scipy's old module: it resolves to today's class
    data = pickle.dumps(sparse, protocol=2).replace(b"scipy.sparse._csc", b"scipy.sparse.csc")
    assert b"scipy.sparse.csc\n" in data or b"scipy.sparse.csc" in data
    assert isinstance(load_legacy_pickle(data)["J_regressor"], scipy.sparse.csc_matrix)
    globals_used = {arg for op, arg, _ in pickletools.genops(pickle.dumps(arrays, protocol=2)) if op.name == "GLOBAL"}
    assert globals_used  # protocol 2 spells its globals out: the allow-list above was exercised


def test_trust_loads_anything_and_is_only_an_explicit_option(tmp_path):
    marker = tmp_path / "trusted"
    data = pickle.dumps(_Call(os.system, f"touch {marker}"))
    with pytest.raises(LegacyPickleError):
        load_legacy_pickle(data)
    load_legacy_pickle(data, trust=True)
    assert marker.exists()


def test_not_a_pickle_is_named(tmp_path):
    with pytest.raises(LegacyPickleError, match="not a readable pickle"):
        load_legacy_pickle(b"just some text\n")


def test_model_loaders_refuse_crafted_pickles_without_side_effects(tmp_path):
    from labelmill.models.body_model import BodyModel, BodyModelError
    from labelmill.models.pose_prior import GMMPosePrior

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"v_template": _Call(os.system, f"touch {marker}")}, protocol=2))
    with pytest.raises(BodyModelError, match="evil.pkl"):
        BodyModel(path=str(evil))
    with pytest.raises(ValueError, match="evil.pkl"):
        GMMPosePrior.from_file(str(evil))
    result = subprocess.run([sys.executable, "-m", "labelmill.pipelines.cli", "body", "show", "--path", str(evil), "--out", str(tmp_path / "b.png")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "evil.pkl" in result.stderr
    assert not marker.exists()


def test_broken_model_archives_are_named_not_raised_raw(tmp_path):
    from labelmill.models.pose_prior import GMMPosePrior

    for content in (b"PK\x03\x04 a truncated zip", b"just text\n"):
        path = tmp_path / "prior.npz"
        path.write_bytes(content)
        with pytest.raises(ValueError, match="pose prior file .*prior.npz"):
            GMMPosePrior.from_file(str(path))
