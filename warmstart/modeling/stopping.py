"""Early stopping on a validation figure, with the best epoch's weights kept.

One rule for every training loop (the stages' resumable fits and the learning-rate trials), as pure
functions of the history rows, so a fit resumed after a crash takes the same decisions as an
uninterrupted one: an epoch is *better* only when better than the best earlier one by more than
``train.min_delta`` (ties keep the earlier, simpler model; with label smoothing the validation loss
creeps down for many epochs by amounts that change nothing); training stops once ``patience`` epochs
in a row were not better; the kept epoch is the best one. Without ``patience`` every epoch runs and
the last is kept (the tutorial's fixed schedule).
"""

from __future__ import annotations

import dataclasses

from warmstart.config.params import TrainParams


@dataclasses.dataclass(frozen=True)
class Stopping:
    """``monitor``: a history key (``val_loss``: lower is better, ``val_accuracy``: higher);
    ``min_delta``: the least change that counts as better."""

    monitor: str
    patience: int | None
    min_delta: float = 0.0

    @classmethod
    def of(cls, train: TrainParams, patience: int | None) -> Stopping:
        return cls(train.monitor, patience, train.min_delta)

    def score(self, row: dict) -> float:
        """The monitored figure, oriented so that larger is better."""
        value = float(row[self.monitor])
        return -value if self.monitor.endswith("loss") else value

    def best_row(self, rows: list[dict]) -> dict:
        """The first row better (by more than ``min_delta``) than the best row before it."""
        best = rows[0]
        for row in rows[1:]:
            if self.score(row) > self.score(best) + self.min_delta:
                best = row
        return best

    def kept_row(self, rows: list[dict]) -> dict:
        """The epoch whose weights the stage keeps: the best one, or the last without patience."""
        return rows[-1] if self.patience is None else self.best_row(rows)

    def should_stop(self, rows: list[dict]) -> bool:
        if self.patience is None or not rows:
            return False
        return int(rows[-1]["epoch"]) - int(self.best_row(rows)["epoch"]) >= self.patience
