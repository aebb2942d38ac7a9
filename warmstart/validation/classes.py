"""Class rules over the images that are trained on: the classes are those of the training split.

Nothing here knows a dataset's class names (nor does the committed schema): every class of train
must be in validation and test, with at least ``validate.min_images_per_class`` usable images in
each split (fewer cannot be learnt from or evaluated on: an error naming the class, the split,
the count and the fix). Class imbalance is information, not a failure: every split's ratio of
largest to smallest class is reported (terminal, metrics, HTML), and above
``validate.warn_class_ratio`` it is a warning. Files of a class that train lacks are reported per
file by ``checks.check_classes``.
"""

from __future__ import annotations

import pandas as pd

from warmstart.config.params import ValidateParams
from warmstart.layout import TRAIN
from warmstart.validation.checks import Problem
from warmstart.validation.table import NO_CLASS


def class_names(table: pd.DataFrame, train_split: str) -> list[str]:
    labels = table.loc[table["split"] == train_split, "label"]
    return sorted(set(labels) - {NO_CLASS})


def class_counts(table: pd.DataFrame, splits: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """split -> class -> images, for the classes of the first (training) split."""
    classes = class_names(table, splits[0])
    counts = table[table["label"].isin(classes)].groupby(["split", "label"]).size()
    return {split: {label: int(counts.get((split, label), 0)) for label in classes}
            for split in splits}


def class_balance(table: pd.DataFrame, splits: tuple[str, ...]) -> dict[str, dict]:
    """split -> ratio largest / smallest class (null without two classes present) and both."""
    balance = {}
    for split, counts in class_counts(table, splits).items():
        present = {label: n for label, n in counts.items() if n}
        if not present:
            balance[split] = {"ratio": None, "smallest_class": None, "smallest_count": 0,
                              "largest_class": None, "largest_count": 0}
            continue
        smallest = min(present, key=lambda label: (present[label], label))
        largest = max(present, key=lambda label: (present[label], label))
        balance[split] = {"ratio": round(present[largest] / present[smallest], 3),
                          "smallest_class": smallest, "smallest_count": present[smallest],
                          "largest_class": largest, "largest_count": present[largest]}
    return balance


def class_checks(table: pd.DataFrame, splits: tuple[str, ...],
                 limits: ValidateParams) -> list[Problem]:
    """At least two classes; every class in every split, often enough; imbalance warnings."""
    train = splits[0]
    counts = class_counts(table, splits)
    if len(counts[train]) < 2:
        return [Problem("classes", f"split '{train}' has {len(counts[train])} class folder(s) "
                        "with usable images; at least 2 are needed")]
    problems = []
    for split, per_class in counts.items():
        if not any(per_class.values()):
            problems.append(Problem("empty split", f"split '{split}' has no usable images of "
                                    f"the classes of '{train}': paths.raw holds "
                                    f"<split>/<class>/<image> for {', '.join(splits)} "
                                    "(`warmstart ingest` writes them)"))
            continue
        for label, count in per_class.items():
            if count == 0:
                problems.append(Problem("missing class", f"class '{label}' has no usable "
                                        f"images in '{split}'"))
            elif count < limits.min_images_per_class:
                problems.append(_too_few(split, label, count, limits.min_images_per_class))
    return problems + imbalance_warnings(class_balance(table, splits), limits.warn_class_ratio)


def _too_few(split: str, label: str, count: int, minimum: int) -> Problem:
    use = "learn from" if split == TRAIN else "evaluate on"
    return Problem("too few images", f"class '{label}' has {count} usable image(s) in "
                   f"'{split}', below validate.min_images_per_class={minimum}: too few to "
                   f"{use}. Add images of '{label}', merge it with a related class, or lower "
                   "validate.min_images_per_class")


def imbalance_warnings(balance: dict[str, dict], limit: float) -> list[Problem]:
    return [Problem("class imbalance", f"'{split}': the largest class '{b['largest_class']}' "
                    f"({b['largest_count']} images) is {b['ratio']:g} times the smallest "
                    f"'{b['smallest_class']}' ({b['smallest_count']}), above "
                    f"validate.warn_class_ratio={limit:g}: plain accuracy favours the large "
                    "classes (train.class_weight=balanced counters it in the loss)",
                    advisory=True)
            for split, b in balance.items() if b["ratio"] is not None and b["ratio"] > limit]
