"""Embedded task datasets (synthetic corpora shipped with the package)."""
