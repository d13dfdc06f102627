"""Stage pipelines: compose data + models + core + tracking. They take typed configs and return results."""
