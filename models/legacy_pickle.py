"""Read the research pickles this field ships (SMPL models, SMPLify's ``gmm_08.pkl``) safely.

The official SMPL pickles are Python 2 pickles whose arrays are ``chumpy.ch.Ch`` objects, and
chumpy does not import on numpy >= 1.24. This reader never imports chumpy: a restricted
unpickler admits only numpy arrays/dtypes, scipy sparse matrices and plain containers, and
turns every ``chumpy.*`` object into the numpy array it holds (its ``x`` state). Anything else
(an arbitrary class or function) is refused, so loading a pickle cannot run foreign code.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

__all__ = ["LegacyPickleError", "load_legacy_pickle", "plain_arrays"]


class LegacyPickleError(ValueError):
    """The file is not a pickle of plain arrays (or chumpy arrays) we can read safely."""


_ALLOWED_PREFIXES = (
    "numpy.",
    "numpy",
    "scipy.sparse",
    "copy_reg",
    "copyreg",
    "__builtin__",
    "builtins",
    "collections",
    "_codecs",
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
            return _ChumpyStand
        if module in ("__builtin__", "builtins"):
            if name in _BUILTINS_OK:
                import builtins

                return getattr(builtins, name)
            raise LegacyPickleError(f"pickle refers to builtins.{name}, which is not allowed")
        if module.startswith(_ALLOWED_PREFIXES):
            return super().find_class(module, name)
        raise LegacyPickleError(f"pickle refers to {module}.{name}; only numpy/scipy arrays and chumpy are allowed")


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


def load_legacy_pickle(source: str | bytes) -> Any:
    """Load a research pickle (path or raw bytes) into plain numpy/scipy objects.

    Python 2 pickles are decoded with ``latin1`` as numpy requires. Raises
    :class:`LegacyPickleError` naming the file and reason for anything unsafe or unreadable.
    """
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        with open(source, "rb") as f:
            data = f.read()
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except LegacyPickleError as exc:
        raise LegacyPickleError(f"{name}: {exc}") from exc
    except Exception as exc:  # truncated or not a pickle at all
        raise LegacyPickleError(f"{name}: not a readable pickle ({type(exc).__name__}: {exc})") from exc
    try:
        return plain_arrays(obj)
    except LegacyPickleError as exc:
        raise LegacyPickleError(f"{name}: {exc}") from exc
