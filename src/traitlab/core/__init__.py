"""Pure tensor code: positions and layer DSLs, hook paths, hooks, extraction methods, metrics, vector math.

Importable without Hydra, MLflow or transformers; everything here takes tensors and modules in and
gives tensors, floats or context managers back.
"""

from traitlab.core.components import (
    COMPONENTS,
    base_model,
    component_dim,
    get_decoder_layers,
    get_module,
    hidden_size,
    hook_path,
    num_layers,
    unembedding,
)
from traitlab.core.hooks import (
    AblationHook,
    ActivationCappingHook,
    CaptureHook,
    HookError,
    MultiLayerCapture,
    MultiLayerProjection,
    MultiLayerSteering,
    PerPositionSteeringHook,
    PerSampleSteering,
    ProjectionHook,
    SteeringHook,
)
from traitlab.core.layers import LayerSpecError, parse_layers
from traitlab.core.methods import METHODS, MethodResult, get_method
from traitlab.core.metrics import accuracy, auroc, effect_size, polarity_correct
from traitlab.core.positions import PositionError, PositionSpec, Segments, parse_position, resolve_batch, resolve_span
from traitlab.core.vecmath import (
    angular_velocity,
    batch_cosine_similarity,
    cosine_similarity,
    derivative,
    normalize_scores,
    orthogonalize,
    pairwise_cosine_matrix,
    pca,
    project_out_subspace,
    projection,
    radial_velocity,
    second_derivative,
)

__all__ = [name for name in dir() if not name.startswith("_")]
