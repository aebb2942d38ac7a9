"""Shared test helpers: synthetic images and datasets, tiny projects, commands, import graphs."""
