"""Corpus input: DCASE-format clip records and their features."""

from harken.training.data.corpus import Clip, CorpusError, load, machine_types, parse_clip_name, scan

__all__ = ["Clip", "CorpusError", "load", "machine_types", "parse_clip_name", "scan"]
