"""Params: params.yaml read once into typed, validated config objects."""
