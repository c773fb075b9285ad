"""Corpora, masking and task files."""
