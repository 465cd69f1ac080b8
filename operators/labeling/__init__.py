"""Labeling exports from transcript Parquet: row filters (filters), NeMo / Hugging Face / WebDataset
writers (export), SubRip / WebVTT / RTTM (subtitles), and what they share (files)."""
