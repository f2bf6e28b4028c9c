"""Machine-readable sample schemas (``infra/schemas/<name>.json``) and checks against them.

A schema names every field of a sample (by tar extension) with its kind and content, and the
columns of ``index.parquet`` and ``inputs.parquet``::

    fields:          extension -> {kind: jpeg|png|json|npz, properties (json) | arrays (npz)}
    index_columns:   column -> {type: string|integer|number|boolean, nullable, enum, units}
    inputs_columns:  same, for the per-input accounting table
    inspect:         columns ``labelmill inspect`` summarises

JSON properties may also be ``object`` (a JSON object) or an ``array`` whose ``items`` are
``object``; only their JSON type is checked, not their members. A JSON property is required
unless it says ``optional: true`` (it may then be absent; when present it is checked).

The writer types its parquet files from the schema (:meth:`DatasetSchema.arrow_schema`) and
``labelmill validate`` checks shards and tables against it (:func:`check_field`,
:func:`check_table`). Every check returns :class:`Issue` values instead of raising, so a
validator can report all of them.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import io
import json
import math
import re
import zipfile
from typing import Any, Mapping

import numpy as np
import pyarrow as pa

from labelmill.infra.formats.items import INPUT_STATUSES

__all__ = [
    "SchemaError",
    "Issue",
    "ArraySpec",
    "ValueSpec",
    "FieldSpec",
    "DatasetSchema",
    "load_schema",
    "parse_schema",
    "check_field",
    "check_table",
    "WRITER_INDEX_COLUMNS",
    "INPUT_STATUSES",
]

# Index columns the dataset writer fills in itself; a schema must declare them.
WRITER_INDEX_COLUMNS = ("key", "member_key", "shard", "num_bytes", "member_sha256")
_REQUIRED_INDEX_COLUMNS = (*WRITER_INDEX_COLUMNS, "input_key")
_REQUIRED_INPUTS_COLUMNS = ("input_key", "status", "reason", "frames_in", "frames_fitted", "frames_written")

_KINDS = ("jpeg", "png", "json", "npz")
_VALUE_TYPES = ("string", "integer", "number", "boolean", "array", "object")
_ARROW_TYPES = {"string": pa.string(), "integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_()}
_MAGIC = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}
_NAME_RE = re.compile(r"^[a-z0-9_]+$")


class SchemaError(ValueError):
    """A schema file is missing or malformed; the message names the schema and the key."""


@dataclasses.dataclass(frozen=True)
class Issue:
    """One way a value differs from its spec."""

    item: str  # what was checked, e.g. "array betas" or "json.bbox"
    what: str  # what is wrong, e.g. "wrong shape"
    expected: str | None = None
    got: str | None = None

    def __str__(self) -> str:
        detail = f" (expected {self.expected}, got {self.got})" if self.expected is not None else ""
        return f"{self.item}: {self.what}{detail}"


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """One array of an ``npz`` field."""

    name: str
    dtype: str  # numpy dtype name, e.g. "float32"
    shape: tuple[int, ...]
    units: str = ""
    description: str = ""
    finite: bool = True  # every value must be finite


@dataclasses.dataclass(frozen=True)
class ValueSpec:
    """One JSON property or one parquet column."""

    name: str
    type: str  # string | integer | number | boolean | array
    nullable: bool = False
    optional: bool = False  # JSON properties: may be absent
    enum: tuple[Any, ...] | None = None
    length: int | None = None  # arrays: exact length
    items: str | None = None  # arrays: element type
    units: str = ""
    description: str = ""


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One sample field, stored as the tar member ``<key>.<extension>``."""

    extension: str
    kind: str  # jpeg | png | json | npz
    properties: tuple[ValueSpec, ...] = ()  # kind json: required properties
    arrays: tuple[ArraySpec, ...] = ()  # kind npz: required arrays
    description: str = ""


@dataclasses.dataclass(frozen=True)
class DatasetSchema:
    """A parsed ``infra/schemas/<name>.json``."""

    name: str
    version: int
    fields: tuple[FieldSpec, ...]
    index_columns: tuple[ValueSpec, ...]
    inputs_columns: tuple[ValueSpec, ...]
    inspect: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    description: str = ""

    @property
    def id(self) -> str:
        """``<name>/<version>``, as recorded in stats.json."""
        return f"{self.name}/{self.version}"

    @property
    def extensions(self) -> tuple[str, ...]:
        return tuple(f.extension for f in self.fields)

    def field(self, extension: str) -> FieldSpec:
        for spec in self.fields:
            if spec.extension == extension:
                return spec
        raise KeyError(f"schema {self.id} has no field {extension!r}")

    @staticmethod
    def arrow_schema(columns: tuple[ValueSpec, ...]) -> pa.Schema:
        """The pyarrow schema of a table with these columns (in this order)."""
        return pa.schema([pa.field(c.name, _ARROW_TYPES[c.type], nullable=c.nullable) for c in columns])


# ----------------------------------------------------------------------------- loading


def load_schema(name: str) -> DatasetSchema:
    """The schema ``name`` shipped in ``labelmill/infra/schemas/<name>.json``."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SchemaError(f"schema name must be lower-case letters, digits and '_', got {name!r}")
    resource = importlib.resources.files("labelmill.infra").joinpath("schemas", f"{name}.json")
    try:
        text = resource.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SchemaError(f"no schema named {name!r} (looked for labelmill/infra/schemas/{name}.json)") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"schema {name!r} is not valid JSON: {exc}") from None
    return parse_schema(document, source=name)


def _require(document: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in document:
        raise SchemaError(f"{where}: missing key {key!r}")
    value = document[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise SchemaError(f"{where}.{key} must be a {kind.__name__}, got {value!r}")
    return value


def _parse_value(name: str, spec: Mapping[str, Any], where: str) -> ValueSpec:
    value_type = _require(spec, "type", str, where)
    if value_type not in _VALUE_TYPES:
        raise SchemaError(f"{where}.type must be one of {', '.join(_VALUE_TYPES)}, got {value_type!r}")
    enum = spec.get("enum")
    if enum is not None and not isinstance(enum, list):
        raise SchemaError(f"{where}.enum must be a list, got {enum!r}")
    items = spec.get("items")
    if value_type == "array" and items not in ("string", "integer", "number", "boolean", "object"):
        raise SchemaError(f"{where}.items must name the element type of an array, got {items!r}")
    return ValueSpec(
        name=name,
        type=value_type,
        nullable=bool(spec.get("nullable", False)),
        optional=bool(spec.get("optional", False)),
        enum=tuple(enum) if enum is not None else None,
        length=spec.get("length"),
        items=items,
        units=str(spec.get("units", "")),
        description=str(spec.get("description", "")),
    )


def _parse_columns(document: Mapping[str, Any], key: str, required: tuple[str, ...], where: str) -> tuple[ValueSpec, ...]:
    columns = _require(document, key, dict, where)
    specs = []
    for name, spec in columns.items():
        parsed = _parse_value(name, spec, f"{where}.{key}.{name}")
        if parsed.type in ("array", "object"):
            raise SchemaError(f"{where}.{key}.{name}: parquet columns must be scalars, not {parsed.type}s")
        specs.append(parsed)
    missing = [c for c in required if c not in columns]
    if missing:
        raise SchemaError(f"{where}.{key} must declare the columns {', '.join(missing)}")
    return tuple(specs)


def parse_schema(document: Mapping[str, Any], *, source: str = "<schema>") -> DatasetSchema:
    """Parse a schema document; raises :class:`SchemaError` naming the bad key."""
    where = f"schema {source}"
    name = _require(document, "name", str, where)
    version = _require(document, "version", int, where)
    fields = []
    for extension, spec in _require(document, "fields", dict, where).items():
        field_where = f"{where}.fields.{extension}"
        kind = _require(spec, "kind", str, field_where)
        if kind not in _KINDS:
            raise SchemaError(f"{field_where}.kind must be one of {', '.join(_KINDS)}, got {kind!r}")
        properties: tuple[ValueSpec, ...] = ()
        arrays: tuple[ArraySpec, ...] = ()
        if kind == "json":
            properties = tuple(
                _parse_value(prop, prop_spec, f"{field_where}.properties.{prop}")
                for prop, prop_spec in _require(spec, "properties", dict, field_where).items()
            )
        if kind == "npz":
            parsed = []
            for array, array_spec in _require(spec, "arrays", dict, field_where).items():
                array_where = f"{field_where}.arrays.{array}"
                shape = _require(array_spec, "shape", list, array_where)
                if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
                    raise SchemaError(f"{array_where}.shape must be a list of non-negative integers, got {shape!r}")
                dtype = _require(array_spec, "dtype", str, array_where)
                try:
                    np.dtype(dtype)
                except TypeError:
                    raise SchemaError(f"{array_where}.dtype {dtype!r} is not a numpy dtype") from None
                parsed.append(ArraySpec(
                    name=array, dtype=dtype, shape=tuple(shape), units=str(array_spec.get("units", "")),
                    description=str(array_spec.get("description", "")), finite=bool(array_spec.get("finite", True)),
                ))
            arrays = tuple(parsed)
        fields.append(FieldSpec(extension, kind, properties, arrays, str(spec.get("description", ""))))
    inspect = {k: tuple(v) for k, v in dict(document.get("inspect", {})).items()}
    return DatasetSchema(
        name=name,
        version=version,
        fields=tuple(fields),
        index_columns=_parse_columns(document, "index_columns", _REQUIRED_INDEX_COLUMNS, where),
        inputs_columns=_parse_columns(document, "inputs_columns", _REQUIRED_INPUTS_COLUMNS, where),
        inspect=inspect,
        description=str(document.get("description", "")),
    )


# ----------------------------------------------------------------------------- checks


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_type(value: Any, value_type: str) -> bool:
    if value_type == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if value_type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    return _type_name(value) == value_type


def _check_value(spec: ValueSpec, value: Any, item: str) -> list[Issue]:
    if value is None:
        return [] if spec.nullable else [Issue(item, "is null", spec.type, "null")]
    if not _is_type(value, spec.type):
        return [Issue(item, "wrong type", spec.type, f"{_type_name(value)} {value!r}"[:80])]
    if spec.enum is not None and value not in spec.enum:
        return [Issue(item, "value not allowed", " | ".join(map(str, spec.enum)), repr(value))]
    if spec.type == "array":
        if spec.length is not None and len(value) != spec.length:
            return [Issue(item, "wrong length", str(spec.length), str(len(value)))]
        for i, element in enumerate(value):
            if spec.items and not _is_type(element, spec.items):
                return [Issue(f"{item}[{i}]", "wrong type", spec.items, f"{_type_name(element)} {element!r}"[:80])]
    return []


def _check_json(spec: FieldSpec, data: bytes) -> list[Issue]:
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [Issue(spec.extension, "not valid UTF-8 JSON", got=str(exc), expected="JSON object")]
    if not isinstance(document, dict):
        return [Issue(spec.extension, "not a JSON object", "object", _type_name(document))]
    issues = []
    for prop in spec.properties:
        item = f"{spec.extension}.{prop.name}"
        if prop.name not in document:
            if not prop.optional:
                issues.append(Issue(item, "missing property"))
        else:
            issues.extend(_check_value(prop, document[prop.name], item))
    return issues


def _check_npz(spec: FieldSpec, data: bytes) -> list[Issue]:
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as exc:
        return [Issue(spec.extension, "not a readable npz archive", got=str(exc)[:120], expected="npz")]
    issues = []
    with archive:
        present = set(archive.files)
        for array_spec in spec.arrays:
            item = f"{spec.extension}:{array_spec.name}"
            if array_spec.name not in present:
                issues.append(Issue(item, "missing array"))
                continue
            try:
                array = archive[array_spec.name]
            except (ValueError, OSError, zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as exc:  # e.g. a pickled object array
                issues.append(Issue(item, "unreadable array", got=str(exc)[:120], expected=array_spec.dtype))
                continue
            if array.dtype != np.dtype(array_spec.dtype):
                issues.append(Issue(item, "wrong dtype", array_spec.dtype, str(array.dtype)))
            if array.shape != array_spec.shape:
                issues.append(Issue(item, "wrong shape", str(array_spec.shape), str(array.shape)))
            elif array_spec.finite and array.dtype.kind == "f" and not np.isfinite(array).all():
                issues.append(Issue(item, "non-finite values", "all finite", f"{int((~np.isfinite(array)).sum())} not"))
    return issues


def check_field(spec: FieldSpec, data: bytes) -> list[Issue]:
    """Issues of one encoded field: image magic bytes, JSON properties, npz arrays."""
    if spec.kind in _MAGIC:
        magic = _MAGIC[spec.kind]
        if not data.startswith(magic):
            got = repr(bytes(data[:8]))
            return [Issue(spec.extension, f"not a {spec.kind} image", f"bytes starting {magic!r}", got)]
        return []
    if spec.kind == "json":
        return _check_json(spec, data)
    return _check_npz(spec, data)


def check_table(columns: tuple[ValueSpec, ...], table: pa.Table) -> list[Issue]:
    """Issues of a parquet table against its column specs (names, types, nulls, enums); items are column names."""
    issues = []
    present = set(table.column_names)
    declared = {c.name for c in columns}
    for extra in sorted(present - declared):
        issues.append(Issue(extra, "column not in the schema"))
    for spec in columns:
        item = spec.name
        if spec.name not in present:
            issues.append(Issue(item, "missing column"))
            continue
        column = table.column(spec.name)
        expected = _ARROW_TYPES[spec.type]
        if column.type != expected:
            issues.append(Issue(item, "wrong column type", str(expected), str(column.type)))
            continue
        if not spec.nullable and column.null_count:
            issues.append(Issue(item, "null values in a non-nullable column", "0 nulls", f"{column.null_count} nulls"))
        if spec.type == "number" and len(column):
            values = column.to_numpy(zero_copy_only=False)  # nulls come back as NaN
            nan_values = int(np.isnan(values).sum()) - column.null_count
            infinite = int(np.isinf(values).sum())
            if nan_values or infinite:
                issues.append(Issue(item, "non-finite values (write null instead)", "finite or null",
                                    f"{nan_values} NaN, {infinite} infinite"))
        if spec.enum is not None:
            unknown = sorted({v for v in column.to_pylist() if v is not None and v not in spec.enum})
            if unknown:
                allowed = " | ".join(map(str, spec.enum))
                issues.append(Issue(item, "value not allowed", allowed, ", ".join(map(repr, unknown[:5]))))
    return issues
