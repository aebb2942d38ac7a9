"""The curated TFDV schema: loading it, proposing one from the data, and diffing the two.

The committed ``schema/schema.pbtxt`` fits any dataset: it has the curated domains below
(decodable formats and colour modes, sizes, ``decodable`` in [1, 1]) and no label domain, the
class names being checked against the training split's classes
(``warmstart.validation.classes``). A proposal (``warmstart schema``) is TFDV's inferred schema
of the readable training images with the curated domains applied; it keeps TFDV's label domain
of the data at hand, which a user may commit to pin the class names. Skew and drift thresholds
come from params (``warmstart.validation.drift``), never from the schema.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import tensorflow_data_validation as tfdv
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from warmstart.atomic import write_text
from warmstart.config.params import ValidateParams
from warmstart.data.decode import TF_DECODABLE_FORMATS
from warmstart.validation.findings import ValidationFailed
from warmstart.validation.stats import beam_statistics
from warmstart.validation.table import OK, build_table

#: Curated domains written into a schema proposal (see `propose_schema`).
CURATED_STRING_DOMAINS = {
    "format": TF_DECODABLE_FORMATS,
    "mode": ("RGB",),
    "extension": ("jpg", "jpeg", "png", "gif", "bmp"),
}


CURATED_INT_DOMAINS = {"decodable": (1, 1), "width": (16, 8192), "height": (16, 8192),
                       "channels": (1, 4), "file_bytes": (1, None)}


def load_schema(path: Path) -> schema_pb2.Schema:
    if not path.is_file():
        raise ValidationFailed(f"No schema at {path}. Create one with `warmstart schema --write`, "
                               "review it, and commit it.")
    return tfdv.load_schema_text(str(path))


def schema_diff(current: Path, proposal: schema_pb2.Schema) -> str:
    """A unified diff from the committed schema to the proposal ('' when equal)."""
    old = current.read_text().splitlines(keepends=True) if current.is_file() else []
    new = _schema_text(proposal).splitlines(keepends=True)
    return "".join(difflib.unified_diff(old, new, str(current), "proposal"))


def write_schema(path: Path, schema: schema_pb2.Schema) -> None:
    write_text(path, _schema_text(schema))


def _schema_text(schema: schema_pb2.Schema) -> str:
    return text_format.MessageToString(schema)


def propose_schema(raw: Path, train: str, limits: ValidateParams) -> schema_pb2.Schema:
    """Infer a schema from the readable training images, then apply the curated domains."""
    table = build_table(raw, (train,), limits, store=None)
    stats = beam_statistics({train: table[table["status"] == OK]}, limits.beam_options)
    schema = tfdv.infer_schema(stats[train])
    for name, values in CURATED_STRING_DOMAINS.items():
        tfdv.set_domain(schema, name, schema_pb2.StringDomain(name=name, value=values))
    for name, (low, high) in CURATED_INT_DOMAINS.items():
        tfdv.set_domain(schema, name, schema_pb2.IntDomain(name=name, min=low, max=high))
    referenced = {f.domain for f in schema.feature if f.WhichOneof("domain_info") == "domain"}
    unused = [d for d in schema.string_domain if d.name not in referenced]
    for domain in unused:
        schema.string_domain.remove(domain)
    return schema
