"""Data validation: the per-image table, per-file checks, TFDV statistics, findings, reports."""
