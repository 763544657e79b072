"""Thin Dagster assets, one module per layer; each calls kalm_core and writes one table."""
