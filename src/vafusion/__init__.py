"""vafusion: per-frame valence/arousal from talking-face videos (Snakemake pipeline)."""

__version__ = "0.1.0"
