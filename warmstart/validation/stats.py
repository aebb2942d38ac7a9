"""TFDV statistics of the image table, computed by TFDV's own Apache Beam pipeline.

One Beam pipeline computes the statistics of every split: the table rows of each split are
staged as a CSV file, read with ``beam.io.ReadFromText``, decoded by TFDV's ``DecodeCSV`` and
summarised by ``tfdv.GenerateStatistics``. The pipeline options come from
``validate.beam_options`` (Beam's own flags), so the same code runs on the DirectRunner (in-memory
or multi-processing) and on Flink, Spark or Dataflow. Remote runners read the staged table from
``--temp_location`` (e.g. ``gs://bucket/tmp``), which their workers can reach; without it the
table is staged in a local temporary folder.
"""

from __future__ import annotations

import logging
import shlex
import tempfile
import uuid

import apache_beam as beam
import pandas as pd
import tensorflow_data_validation as tfdv
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
from tensorflow_data_validation.coders import csv_decoder
from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

from warmstart.validation.table import CATEGORICAL_COLUMNS, FLOAT_COLUMNS, STAT_COLUMNS

logger = logging.getLogger(__name__)

Stats = statistics_pb2.DatasetFeatureStatisticsList


def column_schema() -> schema_pb2.Schema:
    """Types of the statistics columns, so CSV decoding never has to guess them."""
    schema = schema_pb2.Schema()
    for name in STAT_COLUMNS:
        kind = (schema_pb2.BYTES if name in CATEGORICAL_COLUMNS else
                schema_pb2.FLOAT if name in FLOAT_COLUMNS else schema_pb2.INT)
        schema.feature.add(name=name, type=kind)
    return schema


def beam_statistics(tables: dict[str, pd.DataFrame], beam_options: str) -> dict[str, Stats]:
    """TFDV statistics of each table (one Beam pipeline for all of them)."""
    options = PipelineOptions(shlex.split(beam_options))
    staging = _staging_folder(options)
    schema = column_schema()
    stats_options = tfdv.StatsOptions(schema=schema)
    outputs = {name: FileSystems.join(staging, f"stats_{name}.pb") for name in tables}
    try:
        with beam.Pipeline(options=options) as pipeline:
            for name, table in tables.items():
                source = _stage_csv(staging, name, table)
                _ = (pipeline
                     | f"Read[{name}]" >> beam.io.ReadFromText(source)
                     | f"Decode[{name}]" >> csv_decoder.DecodeCSV(column_names=STAT_COLUMNS,
                                                                  schema=schema)
                     | f"Statistics[{name}]" >> tfdv.GenerateStatistics(stats_options)
                     | f"Write[{name}]" >> tfdv.WriteStatisticsToBinaryFile(outputs[name]))
        return {name: tfdv.load_stats_binary(path) for name, path in outputs.items()}
    finally:
        FileSystems.delete([staging])


def _staging_folder(options: PipelineOptions) -> str:
    temp = options.view_as(GoogleCloudOptions).temp_location
    if temp:
        folder = FileSystems.join(temp, f"warmstart-validate-{uuid.uuid4().hex}")
        FileSystems.mkdirs(folder)
        return folder
    return tempfile.mkdtemp(prefix="warmstart-validate-")


def _stage_csv(folder: str, name: str, table: pd.DataFrame) -> str:
    path = FileSystems.join(folder, f"{name}.csv")
    with FileSystems.create(path) as handle:
        handle.write(table[STAT_COLUMNS].to_csv(index=False, header=False).encode())
    return path
