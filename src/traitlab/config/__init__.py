"""Typed configs: dataclasses that validate Hydra configs (schema.py) and their ConfigStore registration (store.py)."""
