"""Dagster wiring for kalm: Definitions, resources, automation and the `kalm` command line."""
