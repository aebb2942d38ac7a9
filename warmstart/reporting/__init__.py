"""Offline, self-contained HTML reports (validation, evaluation): shared page pieces."""
