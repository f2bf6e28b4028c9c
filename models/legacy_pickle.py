"""Read the research pickles this field ships (SMPL models, SMPLify's ``gmm_08.pkl``) safely.

The official SMPL pickles are Python 2 pickles whose arrays are ``chumpy.ch.Ch`` objects, and
chumpy does not import on numpy >= 1.24. This reader never imports chumpy: a restricted
unpickler admits exactly the globals such files need (``_ALLOWED``: numpy's array and scalar
reconstruction, ``ndarray``, ``dtype``, scipy's csc/csr/coo matrices, ``copyreg._reconstructor``,
``_codecs.encode``, ``OrderedDict`` and plain builtin containers), and turns every
``chumpy.*`` object into a stand-in that only keeps its state, then into the numpy array it
holds (its ``x``). Anything else (any other numpy or scipy callable, ``os.system``, ``eval``,
``builtins.getattr``, ...) is refused before it is called, so loading a pickle cannot run
foreign code. A file may still be large: it is read whole into memory.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

__all__ = ["LegacyPickleError", "load_legacy_pickle", "plain_arrays"]


class LegacyPickleError(ValueError):
    """The file is not a pickle of plain arrays (or chumpy arrays) we can read safely."""


# Exactly the globals real SMPL / SMPLify pickles (Python 2 protocol 2 and later protocols of
# the same content) need, under their old and new module names; anything else is refused.
_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_SPARSE = ("csc_matrix", "csr_matrix", "coo_matrix")
_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    [(m, "_reconstruct") for m in _NUMPY_CORE]  # ndarray.__reduce__
    + [(m, "scalar") for m in _NUMPY_CORE]  # numpy scalars (np.float64(1.5))
    + [("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")]  # protocol 5 arrays
    + [("numpy", "ndarray"), ("numpy", "dtype")]
    + [(f"scipy.sparse.{kind[:3]}", kind) for kind in _SPARSE]  # scipy < 1.8 module names (SMPL's J_regressor)
    + [(f"scipy.sparse._{kind[:3]}", kind) for kind in _SPARSE]
    + [("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor")]  # new-style objects (chumpy's Ch)
    + [("_codecs", "encode")]  # bytes written by Python 3 at protocol 2
    + [("collections", "OrderedDict")]
)
_BUILTINS_OK = {"set", "frozenset", "list", "dict", "tuple", "object", "slice", "complex", "bytearray", "int", "float"}


class _ChumpyStand:
    """Stand-in for any chumpy class: keeps the pickled state so its array can be recovered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def to_array(self) -> np.ndarray:
        st = self.state
        if isinstance(st, tuple) and len(st) == 2 and isinstance(st[1], dict):  # (slots, dict) form
            st = {**(st[0] or {}), **st[1]} if isinstance(st[0], dict) else st[1]
        if isinstance(st, dict):
            if "x" in st:
                return np.asarray(plain_arrays(st["x"]))
            for value in st.values():
                value = plain_arrays(value)
                if isinstance(value, np.ndarray):
                    return value
        raise LegacyPickleError("a chumpy object in the pickle holds no array state ('x')")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "chumpy" or module.startswith("chumpy."):
            return _ChumpyStand  # holds state only; nothing of chumpy runs
        if module in ("__builtin__", "builtins"):
            if name in _BUILTINS_OK:
                import builtins

                return getattr(builtins, name)
            raise LegacyPickleError(f"pickle refers to builtins.{name}, which is not allowed")
        if (module, name) in _ALLOWED:
            if module.startswith("scipy.sparse"):  # old module names resolve to today's classes
                import scipy.sparse

                return getattr(scipy.sparse, name)
            return super().find_class(module, name)
        raise LegacyPickleError(f"pickle refers to {module}.{name}; only numpy/scipy arrays and chumpy are allowed "
                                "(trust_pickle loads any pickle, for files you trust)")


def plain_arrays(obj: Any) -> Any:
    """Recursively replace chumpy stand-ins by numpy arrays inside dicts/lists/tuples."""
    if isinstance(obj, _ChumpyStand):
        return obj.to_array()
    if isinstance(obj, dict):
        return {k: plain_arrays(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain_arrays(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(plain_arrays(v) for v in obj)
    return obj


def load_legacy_pickle(source: str | bytes, *, trust: bool = False) -> Any:
    """Load a research pickle (path or raw bytes) into plain numpy/scipy objects.

    Python 2 pickles are decoded with ``latin1`` as numpy requires. Raises
    :class:`LegacyPickleError` naming the file and reason for anything unsafe or unreadable.
    ``trust=True`` (the documented ``trust_pickle`` config options) drops the allow-list and
    runs whatever the file asks for: only for files you made or trust, never for downloads.
    """
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        with open(source, "rb") as f:
            data = f.read()
    try:
        unpickler = pickle.Unpickler if trust else _RestrictedUnpickler
        obj = unpickler(io.BytesIO(data), encoding="latin1").load()
    except LegacyPickleError as exc:
        raise LegacyPickleError(f"{name}: {exc}") from exc
    except Exception as exc:  # truncated or not a pickle at all
        raise LegacyPickleError(f"{name}: not a readable pickle ({type(exc).__name__}: {exc})") from exc
    try:
        return plain_arrays(obj)
    except LegacyPickleError as exc:
        raise LegacyPickleError(f"{name}: {exc}") from exc
