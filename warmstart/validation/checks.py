"""Per-file checks of the image table that a TFDV schema cannot express, each naming its files.

Every check returns :class:`Problem` objects: what is wrong, the files concerned and, for each
file the ``quarantine`` policy would leave out of training, why. TFDV anomalies only give counts
and values; these checks say which files, so a user can fix the data source.

Class names come from the data, never from a default: a class is known when the training split
has it (and, if the schema has a label domain, when the domain lists it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import schema_pb2

from warmstart.config.params import ValidateParams
from warmstart.validation.phash import connected_groups, hamming, near_pairs
from warmstart.validation.table import NO_CLASS, OK, empty_class_folders

#: Why a colour mode is a problem, for the per-file reasons.
MODE_HINTS = {"L": "grayscale", "LA": "grayscale with alpha: alpha is dropped",
              "RGBA": "alpha channel: the training decoder drops it",
              "P": "palette image", "CMYK": "CMYK: converted by the decoder, colours may be off",
              "I;16": "16-bit: quantised to 8 bits by the decoder", "I": "32-bit integer",
              "F": "floating point", "1": "1-bit"}
#: The file name extensions that fit each sniffed format.
EXTENSIONS = {"jpeg": {"jpg", "jpeg", "jpe", "jfif"}, "png": {"png"}, "gif": {"gif"},
              "bmp": {"bmp", "dib"}, "webp": {"webp"}}
#: What a viewer does with each EXIF Orientation before showing the stored pixels.
ORIENTATIONS = {2: "mirrored", 3: "rotated 180°", 4: "flipped upside down",
                5: "mirrored and rotated 90° counter-clockwise", 6: "rotated 90° clockwise",
                7: "mirrored and rotated 90° clockwise", 8: "rotated 90° counter-clockwise"}
#: Schema features whose domain violations are reported per file (label has its own check).
DOMAIN_FEATURES = ("format", "extension", "mode", "channels", "width", "height", "file_bytes")


@dataclass
class Problem:
    """One finding. ``quarantine``: file -> reason, the files the quarantine policy leaves out;
    a problem without them cannot be fixed by quarantine and fails the stage under either
    policy. An ``advisory`` problem (a warning) never fails the stage: it does not bias training
    or evaluation (an empty class folder is simply no class; a duplicate within a split only
    weights one image twice); quarantine still leaves out its files. ``details``: file -> what
    was found, for files that are reported but not quarantined."""

    check: str
    reason: str
    files: list[str] = field(default_factory=list)
    quarantine: dict[str, str] = field(default_factory=dict)
    advisory: bool = False
    details: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"check": self.check, "reason": self.reason, "files": self.files,
                "quarantine": self.quarantine, "advisory": self.advisory,
                "details": self.details}

    def about(self, path: str) -> str:
        """What this problem says about one of its files ('' if nothing in particular)."""
        return self.quarantine.get(path) or self.details.get(path, "")


def per_file(check: str, reason: str, reasons: dict[str, str],
             advisory: bool = False) -> list[Problem]:
    """A problem whose every file is quarantined with its own reason (none if no files)."""
    if not reasons:
        return []
    return [Problem(check, reason, sorted(reasons), dict(sorted(reasons.items())), advisory)]


def file_checks(table: pd.DataFrame, raw: Path, splits: tuple[str, ...],
                schema: schema_pb2.Schema, limits: ValidateParams) -> list[Problem]:
    """Every per-file check, in report order."""
    readable = table[table["status"] == OK]
    problems = check_status(table)
    problems += check_classes(table, splits, schema)
    problems += check_empty_class_folders(raw, splits)
    problems += check_domains(readable, schema)
    problems += check_extension(readable)
    problems += check_geometry(readable, limits)
    problems += check_orientation(readable)
    problems += check_duplicates(readable, splits, limits.near_duplicate_distance)
    return problems


def check_status(table: pd.DataFrame) -> list[Problem]:
    """Files that could not be read or decoded: symlinks, empty, huge, bombs, corrupt."""
    problems = []
    for status, group in table[table["status"] != OK].groupby("status", sort=True):
        problems += per_file(f"file: {status}", f"{len(group)} file(s) cannot be trained on",
                             dict(zip(group["path"], group["error"], strict=True)))
    return problems


def check_classes(table: pd.DataFrame, splits: tuple[str, ...],
                  schema: schema_pb2.Schema) -> list[Problem]:
    """Files outside class folders; classes unknown to the schema or absent from training."""
    loose = table[table["label"] == NO_CLASS]
    problems = per_file("class folder", "files lie directly in a split folder, not in a class "
                        "folder", {p: "not in a class folder" for p in loose["path"]})
    known = label_domain(schema)
    train_labels = set(table.loc[table["split"] == splits[0], "label"]) - {NO_CLASS}
    unknown = {}
    for split, label, path in table[["split", "label", "path"]].itertuples(index=False):
        if label == NO_CLASS:
            continue
        if known is not None and label not in known:
            unknown[path] = f"class '{label}' is not in the schema's label domain {sorted(known)}"
        elif label not in train_labels:
            unknown[path] = f"class '{label}' in '{split}' has no images in '{splits[0]}'"
    return problems + per_file("unknown class", "files of a class the model is not trained on",
                               unknown)


def label_domain(schema: schema_pb2.Schema) -> set[str] | None:
    try:
        domain = tfdv.get_domain(schema, "label")
    except ValueError:
        return None
    return set(domain.value) if isinstance(domain, schema_pb2.StringDomain) else None


def check_empty_class_folders(raw: Path, splits: tuple[str, ...]) -> list[Problem]:
    return [Problem("empty class folder", f"{folder}/ holds no files: it is not a class",
                    [f"{folder}/"], advisory=True)
            for folder in empty_class_folders(raw, splits)]


def check_domains(table: pd.DataFrame, schema: schema_pb2.Schema) -> list[Problem]:
    """Name the files behind each schema domain violation (TFDV reports counts and values)."""
    problems = []
    for name in DOMAIN_FEATURES:
        domain = _domain(schema, name)
        if domain is None:
            continue
        column = table[name]
        if isinstance(domain, schema_pb2.StringDomain):
            allowed = list(domain.value)
            bad = table[~column.astype(str).isin(set(allowed))]
            text = f"not in the schema's {name} domain {allowed}"
        else:
            low = domain.min if domain.HasField("min") else float("-inf")
            high = domain.max if domain.HasField("max") else float("inf")
            bad = table[(column < low) | (column > high)]
            text = f"outside the schema's {name} range [{low}, {high}]"
        reasons = {path: f"{name} {value!r} {text}" + _hint(name, value)
                   for path, value in zip(bad["path"], bad[name], strict=True)}
        problems += per_file(f"schema: {name}", f"{name} {text}", reasons)
    return problems


def _domain(schema: schema_pb2.Schema, name: str):
    feature = next((f for f in schema.feature if f.name == name), None)
    if feature is None or feature.WhichOneof("domain_info") not in (
            "domain", "string_domain", "int_domain"):
        return None
    return tfdv.get_domain(schema, name)


def _hint(name: str, value: object) -> str:
    hint = MODE_HINTS.get(str(value)) if name == "mode" else None
    return f" ({hint})" if hint else ""


def check_extension(table: pd.DataFrame) -> list[Problem]:
    """Content and file name disagree, e.g. a PNG named .jpg."""
    reasons = {path: f"content is {fmt.upper()} but the name ends in .{ext}"
               for path, fmt, ext in table[["path", "format", "extension"]].itertuples(
                   index=False)
               if fmt in EXTENSIONS and ext not in EXTENSIONS[fmt]}
    return per_file("extension mismatch", "the file name's extension does not match its "
                    "content", reasons)


def check_geometry(table: pd.DataFrame, limits: ValidateParams) -> list[Problem]:
    """Too small, extreme aspect ratio, blank (no contrast)."""
    small = table[(table["width"] < limits.min_side) | (table["height"] < limits.min_side)]
    wide = table[table["aspect"] > limits.max_aspect]
    blank = table[table["contrast"] < limits.min_contrast]
    return (per_file("too small", f"width or height below validate.min_side={limits.min_side}",
                     {p: f"{w}x{h} pixels" for p, w, h in
                      small[["path", "width", "height"]].itertuples(index=False)})
            + per_file("extreme aspect ratio", f"long side / short side above "
                       f"validate.max_aspect={limits.max_aspect} (a warning: resized to a "
                       "square, a panorama is squashed but still trains)",
                       {p: f"{w}x{h} pixels, aspect {a:.2f}" for p, w, h, a in
                        wide[["path", "width", "height", "aspect"]].itertuples(index=False)},
                       advisory=True)
            + per_file("blank image", f"grey-level std below validate.min_contrast="
                       f"{limits.min_contrast}",
                       {p: f"contrast {c:.2f}, brightness {b:.1f}" for p, c, b in
                        blank[["path", "contrast", "brightness"]].itertuples(index=False)}))


def check_orientation(table: pd.DataFrame) -> list[Problem]:
    """Files with an EXIF Orientation other than 1: a photo viewer shows them rotated or
    mirrored, while warmstart trains and serves the pixels as stored (``tf.io.decode_image``
    ignores the tag in both), so there is no train/serve skew; a warning naming the files."""
    tagged = table[table["orientation"] != 1]
    if tagged.empty:
        return []
    details = {path: f"EXIF Orientation {value} ({ORIENTATIONS.get(value, 'unknown value')})"
               for path, value in zip(tagged["path"], tagged["orientation"], strict=True)}
    return [Problem("EXIF orientation", f"{len(details)} file(s) carry an EXIF Orientation "
                    "other than 1, so viewers show them turned; warmstart trains and serves "
                    "the pixels as stored (no train/serve skew). Rotate the files themselves "
                    "if the stored pixels are sideways", sorted(details),
                    advisory=True, details=dict(sorted(details.items())))]


def check_duplicates(table: pd.DataFrame, splits: tuple[str, ...],
                     max_distance: int) -> list[Problem]:
    """Exact (sha256) and near (pHash) duplicates, across splits (leakage) and within one."""
    order = {split: index for index, split in enumerate(splits)}
    rows = table.assign(_order=table["split"].map(order)).sort_values(["_order", "path"])
    problems = []
    for _, group in rows.groupby("sha256", sort=False):
        if len(group) > 1:
            problems.append(_duplicate_problem(group, "duplicate", "identical content (sha256 "
                                               f"{group['sha256'].iloc[0][:12]}…)"))
    unique = rows.drop_duplicates("sha256").reset_index(drop=True)
    for members in connected_groups(near_pairs(list(unique["phash"]), max_distance), len(unique)):
        group = unique.iloc[members]
        problems.append(_duplicate_problem(group, "near-duplicate", "visually near-identical "
                                           f"(pHash distance <= {max_distance})"))
    return problems


def _duplicate_problem(group: pd.DataFrame, kind: str, how: str) -> Problem:
    """Keep the first copy (training split first); quarantine the others — all of them when
    the copies disagree on the label."""
    files = list(group["path"])
    keep, keep_hash = files[0], group["phash"].iloc[0]
    splits, labels = set(group["split"]), set(group["label"])
    scope = "across splits (leak)" if len(splits) > 1 else "within a split"
    if len(labels) > 1:
        check = f"{kind} with conflicting labels"
        quarantine = {p: f"{how}, labelled {sorted(labels)}" for p in files}
    else:
        check = f"{kind} {scope}"
        quarantine = {p: f"{kind} of {keep} ({how}"
                      + (f", distance {hamming(h, keep_hash)})" if kind != "duplicate" else ")")
                      for p, h in zip(files[1:], group["phash"].iloc[1:], strict=True)}
    leak = " — evaluation on a training image" if len(splits) > 1 else ""
    # Within one split a copy weighs an image twice, and copies that disagree on the label are
    # label noise (a warning naming them; quarantine leaves them all out); across splits it
    # is evaluation on a training image, which always blocks.
    return Problem(check, f"{len(files)} files: {how}{leak}", files, quarantine,
                   advisory=len(splits) == 1)


def check_quarantined(clean: int, total: int, limits: ValidateParams) -> list[Problem]:
    """Not too many files quarantined: beyond a share, something is systematically wrong."""
    excluded = total - clean
    if not total or excluded / total <= limits.max_quarantine_fraction:
        return []
    return [Problem("too many bad files", f"{excluded} of {total} files ({excluded / total:.1%}) "
                    "are quarantined, above validate.max_quarantine_fraction="
                    f"{limits.max_quarantine_fraction}: something is systematically wrong")]
