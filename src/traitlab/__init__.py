"""traitlab: extract, validate and use trait vectors of language models."""

__version__ = "0.1.0"
