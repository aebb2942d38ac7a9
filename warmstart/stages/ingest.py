"""Stage `ingest`: bring a dataset (http(s) URL, local .zip or local folder) into ``paths.raw``.

Whatever the source's layout (split folders, class folders, a CSV of labels; ``data.layout``)
and whatever it calls its splits, the output is ``<raw>/<split>/<class>/<image>`` in the
canonical splits ``train``, ``validation`` and ``test`` (``warmstart.layout.SPLITS``). Each
image's split is recorded in ``paths.split_assignments``, which the next ingest reads: an image
never changes split when images are added. The source is never modified; downloads and archives
are checked before use (``warmstart.data.fetch``); no TensorFlow here.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from warmstart.atomic import atomic_dir, write_json
from warmstart.config.params import Params
from warmstart.data.fetch import IngestError, download
from warmstart.data.ingesting import ingest_into, log_summary
from warmstart.data.splitting import read_assignments, write_assignments
from warmstart.store import Store

logger = logging.getLogger(__name__)

__all__ = ["IngestError", "download", "run_ingest"]


def run_ingest(params: Params) -> Path:
    """Materialise ``data.source`` as ``paths.raw`` and its splits as
    ``paths.split_assignments``; return the raw folder. Images pHashed and reused from the
    store, and the seconds, go to ``paths.ingest_details``."""
    started = time.monotonic()
    raw, assignments = params.path("raw"), params.path("split_assignments")
    previous = read_assignments(assignments)
    store = Store.of(params)
    with atomic_dir(raw) as staging:
        result = ingest_into(params, staging, previous, store)
    write_assignments(assignments, result.rows)
    store.evict()
    write_json(params.path("ingest_details"), {**store.counts(), "images": len(result.rows),
                                               "seconds": round(time.monotonic() - started, 1)})
    dropped = len(set(previous) - {row.path for row in result.rows})
    if dropped:
        logger.info("%d images of the previous split assignments are no longer in the source",
                    dropped)
    log_summary(result)
    return raw
