"""Per-token trait monitoring shared by the stages that use vectors (infer, analyze, generate, chat).

vectors      which registered vector to monitor per (trait, layer)
scoring      forward passes with projection / capture / calibration hooks, and scoring items into records
records      the per-prompt record (tokens, score modes, norms) and its summaries
views        JSON / HTML / PNG views of records and their logging to an MLflow run
calibration  massive-activation calibration stored per model
captures     raw per-token activations on disk (capture now, re-project later)
generation   generate (optionally steered) with the projections taken in the same forward passes
"""
