"""DVCLive files: the training stages' per-epoch history and evaluate's sklearn plots.

DVC's own format, so ``dvc exp show``, ``dvc plots`` and the VS Code DVC extension read them,
live while a stage trains. A training stage's history folder (``paths.<stage>_history``) holds
``plots/metrics/<name>.tsv`` (one row per epoch: ``step`` is the 1-based epoch, continuing from
transfer into finetune) and ``metrics.json`` (the latest epoch). DVCLive is used as a writer only:
it never writes ``dvc.yaml`` (``dvcyaml=None``: dvc.yaml declares these files), never makes its
own experiment commits (``save_dvc_exp=False``), logs no timestamps (equal runs write equal
bytes); only ``log_metric``, ``log_sklearn_plot`` and ``make_summary`` are called, never
``next_step``/``end`` (inside ``dvc exp run``, ``end`` would ``git add`` the folder; neither posts
to DVC Studio here). It is never resumed from its own files: a resumed stage rewrites them from
the backed-up history rows (``modeling/training.py``), so they match an uninterrupted run's. No
TensorFlow here.
"""

from __future__ import annotations

import csv
from pathlib import Path

from dvclive import Live

from warmstart.atomic import atomic_dir

#: Keras' names of a history row's figures -> the names logged (split named: no bare
#: ``accuracy`` that is the training split's).
LIVE_NAMES = {"loss": "train_loss", "accuracy": "train_accuracy", "val_loss": "validation_loss",
              "val_accuracy": "validation_accuracy"}
#: DVCLive's files inside a history folder.
LIVE_METRICS_FILE = "metrics.json"
LIVE_PLOTS_DIR = "plots"
LIVE_CURVES_DIR = "plots/metrics"


class LiveFiles(Live):
    """DVCLive's writer without its repository probing: ``Live._init_dvc`` (experiment name,
    baseline commit) is only needed to save experiments, and in DVCLive 3.49 it fails in a git
    repository without commits (scmrepo ``SCMError: Empty git repo``), where `dvc repro` runs."""

    def _init_dvc(self) -> None:
        self._dvc_repo = None


def open_live(folder: Path) -> Live:
    """A DVCLive writer on ``folder`` (emptied of earlier DVCLive files), and nothing else."""
    return LiveFiles(dir=str(folder), resume=False, report=None, save_dvc_exp=False,
                     dvcyaml=None, monitor_system=False)


def log_epoch(live: Live, row: dict) -> None:
    """One history row (``epoch`` and Keras' names) as DVCLive step ``epoch``; writes the
    curves and ``metrics.json`` at once, so watchers see it."""
    live.step = int(row["epoch"])
    for key, name in LIVE_NAMES.items():
        live.log_metric(name, float(row[key]))
    live.make_summary()


def write_history(folder: Path, rows: list[dict]) -> None:
    """The whole history, atomically: what an uninterrupted run's live logging left."""
    with atomic_dir(folder) as staging:
        live = open_live(staging)
        for row in rows:
            log_epoch(live, row)


def read_history(folder: Path) -> list[dict]:
    """The history rows (``epoch`` and Keras' names, floats) of a history folder."""
    rows: dict[int, dict] = {}
    for key, name in LIVE_NAMES.items():
        with open(folder / LIVE_CURVES_DIR / f"{name}.tsv", newline="") as handle:
            for line in csv.DictReader(handle, delimiter="\t"):
                rows.setdefault(int(line["step"]), {"epoch": int(line["step"])})[key] = \
                    float(line[name])
    return [rows[epoch] for epoch in sorted(rows)]
