"""The code MLflow logs as the served model (models-from-code): builds the agent; the steering
configuration arrives as the model's `steering` artifact directory."""

from mlflow.models import set_model

from traitlab.serving.agent import SteeredChatAgent

set_model(SteeredChatAgent())
