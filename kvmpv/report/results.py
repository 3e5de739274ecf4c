# SPDX-License-Identifier: GPL-2.0-only
"""The kvmpv results file: a versioned JSON document with a JSON Schema.

``schema/results-v1.json`` (shipped in the package) is the contract between the
commands that write results (``exercise``, ``bench``) and the ones that read
them (``report``, ``compare``), and between kvmpv versions: a file is validated
when written and when read, so a broken or foreign file is refused with one
line instead of a traceback deep inside a plot.

This module only builds, validates, reads and writes documents; it does not
measure anything.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import UsageError
from .cases import write_text

SCHEMA_NAME = "kvmpv-results"
SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("schema") / "results-v1.json"

Doc = dict[str, Any]


def load_schema() -> dict[str, Any]:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        schema: dict[str, Any] = json.load(f)
    return schema


def new_document(host: dict[str, Any], command: str = "") -> Doc:
    """An empty results document for ``host`` (a ``kvmpv probe`` dict)."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    doc: Doc = {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "kvmpv_version": __version__,
        "created": now.isoformat().replace("+00:00", "Z"),
        "host": host,
    }
    if command:
        doc["command"] = command
    return doc


def validation_errors(doc: Any) -> list[str]:
    """Every schema violation of ``doc`` as "path: message" lines (empty if valid)."""
    # jsonschema is a declared dependency; imported here so that the modules
    # that only write KTAP do not pay for it.
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    out = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in err.absolute_path) or "(top)"
        out.append(f"{where}: {err.message}")
    return out


def validate(doc: Any, source: str = "results") -> None:
    """Raise ``UsageError`` naming the first violations if ``doc`` is not a valid file."""
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA_NAME:
        raise UsageError(f'{source}: not a kvmpv results file (no "schema": "{SCHEMA_NAME}")')
    version = doc.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise UsageError(
            f"{source}: schema_version must be a number, not {type(version).__name__} {version!r}"
        )
    if version != SCHEMA_VERSION:
        raise UsageError(
            f"{source}: results schema version {version!r}, this kvmpv reads {SCHEMA_VERSION}"
        )
    errors = validation_errors(doc)
    if errors:
        more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
        raise UsageError(f"{source}: invalid results file: {'; '.join(errors[:3])}{more}")


def read(path: str) -> Doc:
    """Read and validate a results file; bad files raise ``UsageError`` (exit 2)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read: {err}") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: not JSON: {err.msg} at line {err.lineno}") from None
    validate(doc, path)
    assert isinstance(doc, dict)
    return doc


def write(doc: Doc, path: str) -> None:
    """Validate, then write atomically (a reader never sees half a file)."""
    validate(doc, path)
    write_text(path, json.dumps(doc, indent=2, sort_keys=False) + "\n")
