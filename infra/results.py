"""Content-keyed stage results: the unit of work is the unit of durability (DESIGN.md §2).

Every stage's result for one input is stored, by the worker that computed it, under a key that
names exactly what produced it::

    root key   = H("input", key, uri, start, end, fingerprint)        the input's content identity
    stage key  = H(stage name, stage fingerprint, upstream key, side)  one per stage, in order

* the *stage fingerprint* hashes the operator's class, its configuration
  (:func:`config_fingerprint`: ``operator.fingerprint()`` when it has one, else its
  constructor state) and its code: the source of the operator's module and of every labelmill
  module it imports, transitively, with docstrings removed (:func:`code_fingerprint`). A changed
  weight file, threshold or line of code changes the keys of that stage and of every later one;
  earlier stages keep theirs.
* *side* covers what a stage reads besides its upstream result: the input columns it declares in
  ``reads`` (e.g. the label the samples stage writes) and ``operator.item_fingerprint(item)`` (e.g.
  the stat of a precomputed keypoints file).

Layout under the output root ``OUT``::

    OUT/results/<stage>/<key[:2]>/<key>.npz          the columns the stage added (infra/formats/results.py)
    OUT/results/<stage>/<key[:2]>/<key>.failed.json   a recorded per-item failure (reason)
    OUT/results/<stage>/<key[:2]>/<key>.<ext>         a file column (the samples' tar fragment)

Each file is written atomically (temporary name, then rename), so a result either exists whole
or not at all: a crash at any point loses at most the work in flight.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import functools
import hashlib
import json
import logging
import math
import pathlib
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from labelmill.infra import storage
from labelmill.infra.formats.results import decode_result, encode_result

log = logging.getLogger(__name__)

__all__ = [
    "RESULTS_DIR",
    "digest",
    "canonical",
    "config_fingerprint",
    "code_fingerprint",
    "package_code_hash",
    "stage_fingerprint",
    "root_key",
    "stage_key",
    "ResultStore",
]

RESULTS_DIR = "results"
KEY_HEX = 32  # 128 bits: no collision among billions of results
IDENTITY_COLUMNS = ("key", "uri", "start", "end", "fingerprint")


def canonical(value: Any, where: str = "value") -> Any:
    """``value`` as plain JSON data for hashing: dataclasses, mappings, sequences, numbers, strings.

    Raises TypeError naming ``where`` for anything else (a value we cannot hash reproducibly).
    """
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, enum.Enum):
        return canonical(value.value, where)
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__type__": type(value).__qualname__,
                **{f.name: canonical(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)}}
    if isinstance(value, Mapping):
        return {str(k): canonical(v, f"{where}.{k}") for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return canonical(value.item(), where)
    if isinstance(value, np.ndarray):
        return {"__array__": str(value.dtype), "shape": list(value.shape),
                "sha256": hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()}
    raise TypeError(f"{where}: a {type(value).__name__} has no reproducible fingerprint")


def digest(*parts: Any) -> str:
    """Hex sha256 (first 128 bits) of the canonical JSON of ``parts``."""
    text = json.dumps([canonical(p) for p in parts], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:KEY_HEX]


def config_fingerprint(operator: Any) -> Any:
    """What configures ``operator``: ``operator.fingerprint()`` if defined, else its public state."""
    if hasattr(operator, "fingerprint"):
        return canonical(operator.fingerprint(), f"{type(operator).__name__}.fingerprint()")
    state = {k: v for k, v in vars(operator).items() if not k.startswith("_")}
    return canonical(state, type(operator).__name__)


# The labelmill package's folder (this file is <root>/infra/results.py). Modules are found by
# path, never by importing them: asking importlib for "labelmill.a.b.name" imports labelmill.a.b,
# and with it whatever that module imports (Apache Beam: over a second).
_PACKAGE_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _module_file(name: str) -> pathlib.Path | None:
    """The source file of labelmill module ``name`` (``labelmill.a.b``), or None when it is none."""
    parts = name.split(".")
    if parts[0] != "labelmill" or len(parts) < 2 or not all(p.isidentifier() for p in parts):
        return None
    base = _PACKAGE_ROOT.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


@functools.lru_cache(maxsize=None)
def _module_code(name: str) -> tuple[str, tuple[str, ...]]:
    """(hash of the module's code without docstrings, labelmill modules it imports)."""
    path = _module_file(name)
    if path is None:
        return "", ()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names if a.name.startswith("labelmill."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("labelmill") and node.level == 0:
            imported.add(node.module)
            for alias in node.names:  # "from labelmill.infra import storage" names a module
                candidate = f"{node.module}.{alias.name}"
                if _is_module(candidate):
                    imported.add(candidate)
    code = hashlib.sha256(ast.dump(_without_docstrings(tree)).encode()).hexdigest()
    return code, tuple(sorted(imported))


def _is_module(name: str) -> bool:
    return _module_file(name) is not None


def code_fingerprint(module_names: Iterable[str]) -> str:
    """Hash of the code of the modules and of every labelmill module they import, transitively."""
    seen: dict[str, str] = {}
    todo = list(module_names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        code, imported = _module_code(name)
        seen[name] = code
        todo.extend(imported)
    return digest(sorted(seen.items()))


def package_code_hash() -> str:
    """Short hash of every labelmill source file (recorded in a version's config.yaml)."""
    code = hashlib.sha256()
    for folder in ("pipelines", "operators", "models", "infra"):
        for path in sorted((_PACKAGE_ROOT / folder).rglob("*.py")):
            code.update(str(path.relative_to(_PACKAGE_ROOT)).encode())
            code.update(path.read_bytes())
    return code.hexdigest()[:16]


def stage_fingerprint(name: str, operator: Any) -> str:
    """The fingerprint of one stage: its name, operator class, configuration and code."""
    cls = type(operator)
    return digest("stage", name, f"{cls.__module__}.{cls.__qualname__}", config_fingerprint(operator),
                  code_fingerprint([cls.__module__]))


def root_key(item: Mapping[str, Any]) -> str:
    """The content identity of an input item (its key, where it lives, its range and fingerprint)."""
    return digest("input", {c: item.get(c) for c in IDENTITY_COLUMNS})


def stage_key(stage_fp: str, upstream: str, item: Mapping[str, Any], reads: Sequence[str] = (),
              side: str | None = None) -> str:
    """The key of one stage's result for ``item`` (see the module docstring)."""
    declared = {c: item.get(c) for c in reads if c in item and c not in IDENTITY_COLUMNS}
    return digest("result", stage_fp, upstream, declared, side)


class ResultStore:
    """Stage results under ``OUT/results`` on any fsspec URL (see the module docstring)."""

    def __init__(self, out_url: str) -> None:
        self.out_url = out_url.rstrip("/")
        self.root = storage.safe_join(self.out_url, RESULTS_DIR)

    def url(self, stage: str, key: str, extension: str = "npz") -> str:
        if not key or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"result key must be lower-case hex, got {key!r}")
        return storage.safe_join(self.root, f"{stage}/{key[:2]}/{key}.{extension}")

    def exists(self, stage: str, key: str, extension: str = "npz") -> bool:
        return storage.exists(self.url(stage, key, extension))

    def write(self, stage: str, key: str, columns: Mapping[str, Any]) -> None:
        """Store ``columns`` (atomically)."""
        storage.write_bytes(self.url(stage, key), encode_result(columns))

    def write_file(self, stage: str, key: str, extension: str, data: bytes) -> str:
        url = self.url(stage, key, extension)
        storage.write_bytes(url, data)
        return url

    @staticmethod
    def _read_url(url: str, columns: Iterable[str] | None, listed_in: str | None = None) -> dict[str, Any]:
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as handle:
            return decode_result(handle, columns, where=url, listed_in=listed_in)

    def read(self, stage: str, key: str, columns: Iterable[str] | None = None, *,
             listed_in: str | None = None) -> dict[str, Any]:
        """Columns of a stored result (only those asked for, or those the column ``listed_in`` names:
        a remote file is read in ranges, in one open)."""
        return self._read_url(self.url(stage, key), columns, listed_in)

    def read_path(self, relative: str, columns: Iterable[str] | None = None) -> dict[str, Any]:
        """Columns of a result named by its path relative to the output root (``results/...``)."""
        return self._read_url(storage.safe_join(self.out_url, relative), columns)

    def write_failure(self, stage: str, key: str, reason: str) -> None:
        storage.write_text(self.url(stage, key, "failed.json"), json.dumps({"reason": reason}, sort_keys=True))

    def read_failure(self, stage: str, key: str) -> str | None:
        """The recorded failure reason, or None when the stage did not fail on this key."""
        url = self.url(stage, key, "failed.json")
        if not storage.exists(url):
            return None
        return str(json.loads(storage.read_text(url)).get("reason") or "failed")

    def stage_keys(self, stage: str, extension: str = "npz") -> set[str]:
        """Keys of every stored result of ``stage`` (one listing; for planning and gc)."""
        base = storage.safe_join(self.root, stage)
        if not storage.exists(base):
            return set()
        suffix = f".{extension}"
        return {u.rsplit("/", 1)[-1][: -len(suffix)] for u in storage.list_files(base, f"*/*{suffix}")
                if not u.rsplit("/", 1)[-1].startswith(".")}
