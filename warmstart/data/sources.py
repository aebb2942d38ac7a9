"""The layouts people's image folders really have, detected, and the images listed from them.

``split_folders``: ``<split>/<class>/<image>`` (the source's split names from ``data.*_split``;
``val/`` and ``valid/`` are found too). ``class_folders``: ``<class>/<image>``, split by ingest.
``csv``: a ``data.csv`` file of ``path,label[,split]`` rows, paths relative to its folder. Each
is looked for at the top of the source and one folder down (``<name>/...``, as zips often are).
Junk (dotfiles, ``__MACOSX``, non-image files) is skipped and logged; symlinks are refused.
Messages name the source as the user gave it (``label``), never an extraction folder.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from warmstart.config.params import DataParams
from warmstart.data.fetch import IngestError, is_junk
from warmstart.layout import IMAGE_SUFFIXES, TEST, TRAIN, VALIDATION

logger = logging.getLogger(__name__)

#: What the training decoder reads; other files are not images to it.
#: Other names of a validation split folder, tried when ``data.validation_split`` is absent.
VALIDATION_ALIASES = ("val", "valid")
#: The pool of an image whose split the source does not give (ingest chooses it).
UNSPLIT = ""
#: ``data.layout`` values in the order ``auto`` tries them, in each folder looked at.
DETECTED = ("split_folders", "csv", "class_folders")


@dataclasses.dataclass(frozen=True)
class SourceImage:
    """One image of the source: ``path`` is where it is in the source (POSIX, relative: the key
    of its split assignment), ``file`` where it can be read now, ``pool`` the canonical split
    the source puts it in, or ``UNSPLIT``."""

    path: str
    file: Path
    label: str
    pool: str


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What was found: the layout, the folder holding it (relative to the source; '' for its
    top), the source's split folder names by canonical split, and the images."""

    layout: str
    root: str
    splits: dict[str, str]
    images: list[SourceImage]


def find_dataset(top: Path, data: DataParams, label: str) -> Dataset:
    """The dataset in ``top`` (a folder, or the extraction of the zip named ``label``)."""
    layouts = DETECTED if data.layout == "auto" else (data.layout,)
    below = _subfolders(top)
    for folder in [top, *below]:
        for layout in layouts:
            if layout == "class_folders" and folder != top and len(below) > 1:
                continue  # two folders below the top are not one dataset of classes
            found = _LISTERS[layout](folder, data, label, _relative(folder, top))
            if found is not None:
                return found
    raise IngestError(_not_found(top, data, label))


def _not_found(top: Path, data: DataParams, label: str) -> str:
    entries = [_relative(p, top) + ("/" if p.is_dir() else "")
               for folder in [top, *_subfolders(top)] for p in sorted(folder.iterdir())
               if not is_junk(p.name)]
    splits = f"{data.train_split}/ and {data.validation_split}/ folders (nor " + ", ".join(
        f"{a}/" for a in VALIDATION_ALIASES) + ")"
    expected = {"auto": f"no {splits}, no class folders with images and no {data.csv}",
                "split_folders": f"no {splits}",
                "class_folders": "no class folders with images",
                "csv": f"no {data.csv}"}[data.layout]
    return (f"{label} has {expected}, at its top or one folder down (found there: "
            f"{', '.join(entries[:10]) or 'nothing'}). data.layout is {data.layout}: expected "
            "split folders <split>/<class>/<image>, class folders <class>/<image> or a CSV of "
            "path,label[,split] rows. Set data.train_split/data.validation_split to your split "
            "folders' names, data.csv to your CSV's name, or data.layout to your layout.")


def _split_folders(folder: Path, data: DataParams, label: str, root: str) -> Dataset | None:
    splits = _split_names(folder, data)
    if splits is None:
        return None
    _log_ignored(label, [p.name for p in folder.iterdir() if p.name not in splits.values()],
                 "beside the split folders")
    images = []
    for split, name in list(splits.items()):
        found = list(_class_images(folder / name, _subfolders(folder / name), label,
                                   _join(root, name), split))
        if not found and split == TEST:  # optional: held out of validation instead
            logger.info("%s: %s/ holds no images; holding test images out of validation",
                        label, _join(root, name))
            del splits[TEST]
        elif not found:
            raise IngestError(f"{label}: split folder {_join(root, name)}/ has no class folders "
                              "with images; expected <split>/<class>/<image> (data.layout: "
                              "split_folders). Put each class's images in a folder of its name.")
        images += found
    return Dataset("split_folders", root, splits, images)


def _split_names(folder: Path, data: DataParams) -> dict[str, str] | None:
    """Canonical split -> the source's folder name, if ``folder`` holds train and validation."""
    if not _is_dir(folder / data.train_split):
        return None
    candidates = (data.validation_split, *VALIDATION_ALIASES)
    validation = next((name for name in candidates if _is_dir(folder / name)), None)
    if validation is None:
        return None
    if validation != data.validation_split:
        logger.info("No %s/ split folder: using %s/ as the validation split (set "
                    "data.validation_split: %s to say so)", data.validation_split, validation,
                    validation)
    splits = {TRAIN: data.train_split, VALIDATION: validation}
    if _is_dir(folder / data.test_split):
        splits[TEST] = data.test_split
    return splits


def _class_folders(folder: Path, data: DataParams, label: str, root: str) -> Dataset | None:
    classes = [p for p in _subfolders(folder) if _holds_images(p)]
    if not classes:
        return None
    return Dataset("class_folders", root, {},
                   list(_class_images(folder, classes, label, root, UNSPLIT)))


def _class_images(folder: Path, classes: list[Path], label: str, root: str,
                  pool: str) -> Iterator[SourceImage]:
    """The images of ``folder/<class>/...`` (any depth below a class folder)."""
    for entry in folder.iterdir():
        _refuse_links(entry, label, _join(root, entry.name))
    _log_ignored(label, [p.name for p in folder.iterdir() if p not in classes],
                 f"in {root or '.'}/, beside the class folders")
    for class_folder in classes:
        for path, file in _walk(class_folder, label, _join(root, class_folder.name)):
            yield SourceImage(path, file, class_folder.name, pool)


def _walk(folder: Path, label: str, root: str) -> Iterator[tuple[str, Path]]:
    """(source path, file) of the image files below ``folder``; junk is logged, symlinks are
    refused."""
    ignored = []
    for current, dirs, files in os.walk(folder):
        here = Path(current)
        dirs[:] = sorted(d for d in dirs if not is_junk(d))
        for name in [*dirs, *files]:
            _refuse_links(here / name, label, _join(root, _relative(here / name, folder)))
        for name in sorted(files):
            path = _join(root, _relative(here / name, folder))
            if is_junk(name) or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                ignored.append(path)
            else:
                yield path, here / name
    _log_ignored(label, ignored, "(not images: the training decoder reads "
                 f"{', '.join(IMAGE_SUFFIXES)})")


def _csv_layout(folder: Path, data: DataParams, label: str, root: str) -> Dataset | None:
    table = folder / data.csv
    if not table.is_file():
        return None
    _refuse_links(table, label, _join(root, data.csv))
    where = f"{label}: {_join(root, data.csv)}"
    try:
        with open(table, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows, header = list(reader), reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as exc:
        raise IngestError(f"{where} cannot be read as a UTF-8 CSV ({exc}). Save it as UTF-8 "
                          "CSV with the header path,label[,split].") from exc
    if not {"path", "label"} <= set(header):
        raise IngestError(f"{where} has the header {','.join(header) or '(none)'}; expected "
                          "path,label[,split] (data.layout: csv; data.csv names the file).")
    images, seen = [], set()
    for line, row in enumerate(rows, start=2):
        image = _csv_image(row, folder, root, data, f"{where}:{line}")
        if image.path in seen:
            raise IngestError(f"{where}:{line}: {row['path']} is listed twice.")
        seen.add(image.path)
        images.append(image)
    return Dataset("csv", root, {}, images)


def _csv_image(row: dict, folder: Path, root: str, data: DataParams, where: str) -> SourceImage:
    """One CSV row as an image, refusing paths outside the CSV's folder and unsafe labels."""
    text, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
    relative = PurePosixPath(text.replace("\\", "/"))
    if not text or relative.is_absolute() or ".." in relative.parts:
        raise IngestError(f"{where}: path {text!r} is not inside the CSV's folder; give paths "
                          "relative to it, without `..`.")
    file = folder / relative
    if os.path.realpath(file) != os.path.join(os.path.realpath(folder), *relative.parts):
        raise IngestError(f"{where}: {text} goes through a symlink; the dataset must hold "
                          "real files (a link may point outside it). Replace it with a copy.")
    if not file.is_file() or file.suffix.lower() not in IMAGE_SUFFIXES:
        raise IngestError(f"{where}: {text} is not an image file ({', '.join(IMAGE_SUFFIXES)})"
                          " in the CSV's folder; fix the row or remove it.")
    check_label(label, where)
    return SourceImage(_join(root, relative.as_posix()), file, label,
                       _pool(row.get("split"), data, where))


def check_label(label: str, where: str) -> None:
    """A class name becomes a folder name: no separator, no dot-name, not empty."""
    if not label or "/" in label or "\\" in label or label.startswith("."):
        raise IngestError(f"{where}: label {label!r} cannot be a class folder name (empty, a "
                          "path separator or a leading dot); fix the CSV's label column.")


def _pool(value: str | None, data: DataParams, where: str) -> str:
    """The canonical split a CSV split value names (empty: ingest chooses)."""
    value = (value or "").strip()
    names = {data.train_split: TRAIN, data.validation_split: VALIDATION,
             data.test_split: TEST, **{a: VALIDATION for a in VALIDATION_ALIASES}, "": UNSPLIT}
    if value not in names:
        raise IngestError(f"{where}: split {value!r} is none of {data.train_split}, "
                          f"{data.validation_split}, {data.test_split} (data.train_split, "
                          "data.validation_split, data.test_split) or empty (ingest splits).")
    return names[value]


def _refuse_links(path: Path, label: str, shown: str) -> None:
    if path.is_symlink():
        raise IngestError(f"{label}: {shown} is a symlink; the dataset must hold real files (a "
                          "link may point outside the dataset). Replace it with a copy.")


def _holds_images(folder: Path) -> bool:
    """A class folder holds images itself (its subfolders' images belong to it too): a folder of
    class folders is not one class."""
    return any(p.suffix.lower() in IMAGE_SUFFIXES and not is_junk(p.name)
               for p in folder.iterdir())


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_dir(p) and not is_junk(p.name))


def _is_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _log_ignored(label: str, names: list[str], where: str) -> None:
    names = sorted(n for n in names if n)
    if names:
        more = f" and {len(names) - 10} more" if len(names) > 10 else ""
        logger.info("%s: ignoring %d entries %s: %s%s", label, len(names), where,
                    ", ".join(names[:10]), more)


def _relative(path: Path, top: Path) -> str:
    return "" if path == top else path.relative_to(top).as_posix()


def _join(root: str, name: str) -> str:
    return f"{root}/{name}" if root and name else root or name


_LISTERS = {"split_folders": _split_folders, "class_folders": _class_folders,
            "csv": _csv_layout}
