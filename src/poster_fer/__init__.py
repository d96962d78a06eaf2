"""poster-fer: POSTER / POSTER++ facial expression recognition."""

__version__ = "0.1.0"
