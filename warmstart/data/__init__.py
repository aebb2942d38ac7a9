"""Data in and out of the pipeline: image decoding, TFRecord shards, the validated table."""
