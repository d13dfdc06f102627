"""Serving a steered model: the steering bundle on disk, steered chat replies, the MLflow pyfunc model."""
