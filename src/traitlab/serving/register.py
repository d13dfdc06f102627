"""Log a steering bundle as an MLflow pyfunc model (models-from-code + artifacts) and register it."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from traitlab.serving.agent import STEERING_ARTIFACT
from traitlab.serving.bundle import SteeringBundle, write_bundle

MODEL_CODE = Path(__file__).with_name("model_code.py")
# What the served model imports; pinned to this environment's versions (`--env-manager local` uses it as is).
_REQUIREMENTS = ("mlflow", "torch", "transformers", "accelerate", "safetensors", "gguf", "filelock", "numpy")


def requirements() -> list[str]:
    out = []
    for name in _REQUIREMENTS:
        try:
            out.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def _example(bundle: SteeringBundle) -> dict[str, Any]:
    """The request saved with the model. MLflow also answers it once while logging (it loads the model
    and predicts), so a configuration that cannot serve fails here; 4 tokens keep that check short."""
    return {"input": [{"role": "user", "content": "Hello!"}], "max_output_tokens": 4,
            "custom_inputs": {"coefficient": bundle.coefficients[bundle.layers[0]]}}


@contextmanager
def _mlflow_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (which log_model uses) at `uri` for the block, then restore what was SET before
    (usually nothing: the process then follows MLFLOW_TRACKING_URI again, rather than keep a pinned copy of it)."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    prev_tracking, prev_registry = tracking_utils._tracking_uri, registry_utils._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = prev_tracking, prev_registry


def register_steering_model(bundle: SteeringBundle, *, name: str, run_id: str, uri: str,
                            tags: Mapping[str, Any] | None = None) -> str:
    """Log `bundle` as the pyfunc model `model` of run `run_id` and register it as `name`; the version."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="traitlab-serve-") as tmp, _mlflow_uri(uri):
        steering = write_bundle(Path(tmp) / STEERING_ARTIFACT, bundle)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(MODEL_CODE), artifacts={STEERING_ARTIFACT: str(steering)},
                pip_requirements=requirements(), registered_model_name=name, input_example=_example(bundle),
            )
        version = str(info.registered_model_version)
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        for key, value in (tags or {}).items():
            client.set_model_version_tag(name, version, key, str(value))
    return version
