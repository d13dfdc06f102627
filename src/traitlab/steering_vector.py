"""One trait vector as a notebook object: per-layer directions plus where they came from.

    v = SteeringVector.from_registry("starter/optimism", "smollm2_135m", layers="best")
    with v.apply(lm.model, coefficient=8.0):          # mode="add" | "add_response" | "ablate" | "cap"
        ...generate...                                 # the hooks are removed on exit, also on error
    v.save("optimism.safetensors")                    # + optimism.json; SteeringVector.load(...) reads it back

The file is plain safetensors (one float32 tensor ``layer.<N>`` per layer, N = traitlab's 0-based decoder layer)
with the provenance in its header and in a JSON file beside it, so it loads without traitlab:
``safetensors.torch.load_file(path)`` -> ``{"layer.12": tensor}``. ``load`` also reads the single-layer vector
files the extraction stage logs (``vectors/<component>/<position>/<method>/layer_NNN.safetensors``).

Coefficients multiply the direction as stored: traitlab's methods return unit vectors, and the steering
study's best coefficients (``best_coefficients``, read from the registry) are on that same scale.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from traitlab.errors import ConfigError, DataError

FORMAT = "traitlab.steering_vector"
FORMAT_VERSION = "1"
MODES = ("add", "add_response", "ablate", "cap")
CAP_SIDES = ("ceiling", "floor")
_TENSOR_PREFIX = "layer."
_RUN_ID = re.compile(r"[0-9a-f]{32}")
_HIDDEN_WIDTH = ("residual", "attn_contribution", "mlp_contribution")  # components as wide as the hidden state


@dataclass
class SteeringVector:
    """Per-layer directions of one trait and their provenance (every field but ``directions`` is optional)."""

    directions: dict[int, Tensor]  # layer -> float32 [D]
    trait: str | None = None
    model: str | None = None  # identity key of the model the vectors were extracted from (models/identity.py)
    model_id: str | None = None  # HF id, local path or embedded:... the vectors were extracted from
    method: str | None = None
    component: str = "residual"
    position: str | None = None  # position DSL of the extraction, e.g. response[:]
    source_run: str | None = None  # MLflow run id of the extraction
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)  # per-layer extraction metrics
    best_coefficients: dict[int, float] = field(default_factory=dict)  # steering study: best coherent coefficient
    model_name: str | None = None  # that model's display name (model.name)

    def __post_init__(self) -> None:
        if not isinstance(self.directions, Mapping) or not self.directions:
            raise ConfigError("directions", "a SteeringVector needs at least one {layer: Tensor[D]} direction")
        clean: dict[int, Tensor] = {}
        for layer, v in self.directions.items():
            if not isinstance(v, Tensor) or v.dim() != 1:
                shape = list(v.shape) if isinstance(v, Tensor) else type(v).__name__
                raise ConfigError("directions", f"layer {layer}: expected a 1-D tensor, got {shape}")
            if not bool(torch.isfinite(v).all()):
                raise ConfigError("directions", f"layer {layer}: direction contains NaN or inf")
            clean[int(layer)] = v.detach().float().cpu()
        dims = {v.shape[0] for v in clean.values()}
        if len(dims) != 1:
            raise ConfigError("directions", f"directions have different widths {sorted(dims)}; expected one")
        self.directions = dict(sorted(clean.items()))
        self.metrics = {int(k): dict(v) for k, v in self.metrics.items()}
        self.best_coefficients = {int(k): float(v) for k, v in self.best_coefficients.items()}

    # ------------------------------------------------------------------------------------------ basics

    @property
    def layers(self) -> list[int]:
        return list(self.directions)

    @property
    def dim(self) -> int:
        return next(iter(self.directions.values())).shape[0]

    def __getitem__(self, layer: int) -> Tensor:
        return self.directions[layer]

    def __repr__(self) -> str:
        what = ", ".join(f"{k}={getattr(self, k)!r}" for k in ("trait", "model", "method", "position")
                         if getattr(self, k) is not None)
        return f"SteeringVector({what}, layers={self.layers}, dim={self.dim})"

    @property
    def label(self) -> str:
        return f"{self.trait or 'vector'} L{','.join(map(str, self.layers))}"

    def provenance(self) -> dict[str, Any]:
        """Everything but the tensors, JSON-ready (int layer keys become strings in JSON)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "directions"}

    def select(self, layers: Sequence[int]) -> SteeringVector:
        """The same vector restricted to ``layers`` (each must be present)."""
        missing = sorted(set(layers) - set(self.directions))
        if missing:
            raise ConfigError("layers", f"{self.label} has no direction at layers {missing}; it has {self.layers}")
        keep = sorted(set(layers))
        return SteeringVector({k: self.directions[k] for k in keep}, **{
            **self.provenance(),
            "metrics": {k: v for k, v in self.metrics.items() if k in keep},
            "best_coefficients": {k: v for k, v in self.best_coefficients.items() if k in keep},
        })

    # ---------------------------------------------------------------------------------------- files

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.safetensors) and the provenance JSON beside it; returns the tensor file's path."""
        from traitlab.io import atomic_write_json, save_tensors

        path = Path(path).expanduser()
        if path.suffix != ".safetensors":
            path = path.with_suffix(".safetensors")
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "provenance": json.dumps(self.provenance())}
        save_tensors(path, {f"{_TENSOR_PREFIX}{k}": v for k, v in self.directions.items()}, meta)
        atomic_write_json(path.with_suffix(".json"), {"format": FORMAT, "version": FORMAT_VERSION,
                                                      "layers": self.layers, "dim": self.dim, **self.provenance()})
        return path

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        """Read a file written by ``save`` or a single-layer vector file of an extraction run."""
        from traitlab.io import load_tensors

        path = Path(path).expanduser()
        tensors, header = load_tensors(path)
        if header.get("format") == FORMAT:
            directions = {}
            for name, t in tensors.items():
                if not name.startswith(_TENSOR_PREFIX) or not name[len(_TENSOR_PREFIX):].isdigit():
                    raise DataError(path, f"unexpected tensor {name!r}; expected layer.<N> tensors")
                directions[int(name[len(_TENSOR_PREFIX):])] = t
            try:
                prov = json.loads(header.get("provenance", "{}"))
            except json.JSONDecodeError:
                raise DataError(path, "the header's provenance is not JSON") from None
            known = {f.name for f in fields(cls)} - {"directions"}
            return cls(directions, **{k: v for k, v in prov.items() if k in known})
        if set(tensors) == {"vector"} and "layer" in header:  # an extraction run's per-layer vector file
            meta = {k: _parse(v) for k, v in header.items()}
            layer = int(meta["layer"])
            return cls({layer: tensors["vector"]}, trait=meta.get("trait"), model=meta.get("model"),
                       model_name=meta.get("model_name"), model_id=meta.get("model_id"), method=meta.get("method"),
                       component=meta.get("component") or "residual", position=meta.get("position"),
                       metrics={layer: meta["metrics"]} if isinstance(meta.get("metrics"), dict) else {})
        raise DataError(path, f"not a steering vector file: expected layer.<N> tensors with format={FORMAT} in "
                              f"the header, or an extraction vector file; found tensors {sorted(tensors)[:5]}")

    # ------------------------------------------------------------------------------------ registry

    @classmethod
    def from_registry(
        cls,
        trait: str | None = None,
        model: Any = "smollm2_135m",
        layers: Any = "best",
        *,
        method: str | None = None,
        position: str | None = None,
        component: str | None = None,
        run_id: str | None = None,
        n_layers: int | None = None,
        dim: int | None = None,
        trait_path: str | Path | None = None,
        experiment: str = "traitlab",
        uri: str | None = None,
    ) -> SteeringVector:
        """The registered vector of ``trait`` for ``model`` (or of extraction run ``run_id``) at ``layers``.

        ``model``: a model name, ModelSpec or identity key (tracking.registry). ``layers`` is the layer DSL
        (``best`` = the registry's best vector: coherent steering delta > OOD effect size > held-out effect
        size; ``best+2``, ``10-14``, lists). Every layer comes from one extraction setting: the best vector's
        among the vectors of the trait's setting. ``method`` / ``position`` / ``component`` left None are the
        trait's extraction.yaml values (datasets/traits/<trait>, or ``trait_path``), as extract applied them;
        a component neither names is ``residual``. ``n_layers`` (the model's depth, for ranges like
        ``30%-60%``) defaults to the known model's, else one past the deepest vector. ``dim``: the model's
        hidden size, checked against residual-width vectors as they are fetched. ``best_coefficients`` holds
        the steering study's best coherent coefficient of this very vector per layer (steering_results).
        """
        from traitlab.config.trait_overrides import lookup_filters
        from traitlab.tracking.registry import fetch_vector, refs_at_layers

        if run_id:
            refs, best = _run_refs(run_id, experiment=experiment, uri=uri)
            ref0 = next(iter(refs.values()))
            wanted = _layers_of(layers, n_layers or _depth(model, max(refs) + 1), best)
            missing = [lyr for lyr in wanted if lyr not in refs]
            if missing:
                raise ConfigError("layers", f"{layers!r} selects layers {wanted} (best = {best}) but run {run_id} "
                                            f"({ref0.trait}, {ref0.method}, {ref0.position}) has vectors at layers "
                                            f"{sorted(refs)}")
            chosen = [refs[lyr] for lyr in wanted]
        else:
            if not trait:
                raise ConfigError("trait", "from_registry needs a trait (e.g. 'starter/optimism') or a run_id")
            filters = lookup_filters(trait, trait_path, method=method, position=position, component=component)
            filters["component"] = filters["component"] or "residual"
            chosen = [ref for ref, _ in refs_at_layers(trait, model, layers, n_layers or _depth(model, None),
                                                        experiment=experiment, uri=uri, same_setting=True, **filters)]
        directions = {r.layer: fetch_vector(r, uri=uri, experiment=experiment,
                                            expected_dim=dim if r.component in _HIDDEN_WIDTH else None).float()
                      for r in chosen}
        ref0 = chosen[0]
        runs = sorted({r.run_id for r in chosen})
        tags, params = _run_info(runs[0], uri, experiment)
        return cls(directions, trait=ref0.trait, model=ref0.model, model_name=tags.get("model_name"),
                   model_id=params.get("model.id"), method=ref0.method, component=ref0.component,
                   position=ref0.position, source_run=",".join(runs),
                   metrics={r.layer: dict(r.metrics) for r in chosen if r.metrics},
                   best_coefficients=best_coefficients(chosen, experiment=experiment, uri=uri))

    @classmethod
    def from_spec(cls, spec: str, model: Any = "smollm2_135m", layers: Any = "best", **registry: Any
                  ) -> SteeringVector:
        """A vector named the way the command line names it.

        ``starter/optimism`` (a trait: its registered vector at ``layers``), ``run:<id>`` or a bare 32-hex MLflow
        run id (an extraction run, or a steering run's vector), or a path to a ``.safetensors`` file (its layers;
        ``layers`` other than ``best`` keeps a subset). ``registry`` holds from_registry's keyword arguments.
        """
        s = str(spec).strip()
        path = Path(s).expanduser()
        if s.endswith(".safetensors") or path.is_file():
            v = cls.from_files([s], dim=registry.get("dim"))
            if str(layers).strip().lower() == "best":
                return v
            return v.select(_layers_of(layers, registry.get("n_layers") or max(v.layers) + 1, None))
        run_id = s[4:] if s.startswith("run:") else s if _RUN_ID.fullmatch(s) else None
        if run_id is not None:
            return cls.from_registry(None, model, layers, run_id=run_id, **registry)
        if s.count("/") != 1:
            raise ConfigError("vectors", f"{s!r} is not a trait (category/name), run:<id> or a .safetensors file")
        return cls.from_registry(s, model, layers, **registry)

    @classmethod
    def from_files(cls, paths: Sequence[str | Path], dim: int | None = None) -> SteeringVector:
        """One vector from files written by ``save`` or extraction runs' per-layer vector files (one layer
        each, the same component). ``dim``: the model's hidden size, checked for residual-width vectors."""
        parts = []
        for p in paths:
            path = Path(p).expanduser()
            if not path.is_file():
                raise ConfigError("vectors", f"{str(p)!r}: no such vector file")
            v = cls.load(path)
            if dim is not None and v.component in _HIDDEN_WIDTH and v.dim != dim:
                raise DataError(path, f"vector has dimension {v.dim} but the model's {v.component} has {dim}")
            parts.append(v)
        if not parts:
            raise ConfigError("vectors", "no vector files given")
        if len(parts) == 1:
            return parts[0]
        directions: dict[int, Tensor] = {}
        for p, v in zip(paths, parts, strict=True):
            twice = sorted(set(v.layers) & set(directions))
            if twice:
                raise DataError(p, f"a second vector for layers {twice}; give one file per layer")
            directions.update(v.directions)
        components = {v.component for v in parts}
        if len(components) != 1:
            raise ConfigError("vectors", f"vector files of different components {sorted(components)}")

        def common(name: str) -> Any:
            values = {json.dumps(getattr(v, name), sort_keys=True) for v in parts}
            return getattr(parts[0], name) if len(values) == 1 else None

        same = {k: common(k) for k in ("trait", "model", "model_name", "model_id", "method", "position")}
        return cls(directions, **same, component=components.pop(),
                   source_run=",".join(sorted({v.source_run for v in parts if v.source_run})) or None,
                   metrics={k: m for v in parts for k, m in v.metrics.items()},
                   best_coefficients={k: c for v in parts for k, c in v.best_coefficients.items()})

    # -------------------------------------------------------------------------------------- steering

    def apply(
        self,
        model: Any,
        coefficient: float | Mapping[int, float] = 1.0,
        mode: str = "add",
        *,
        start: int | None = None,
        thresholds: Mapping[int, float] | None = None,
        cap: str = "ceiling",
    ) -> Any:
        """A context manager that steers ``model`` (an nn.Module or a traitlab LoadedModel) while it is open.

        mode ``add``: ``h += coefficient * v`` at every non-pad position of each layer; ``add_response``: the
        same from absolute position ``start`` on (the last prompt position, so that every response token is
        produced by a steered state); ``ablate``: project the direction out (coefficient unused); ``cap``:
        clamp ``<h, v̂>`` at ``thresholds[layer]`` from above (``cap="ceiling"``) or below (``"floor"``).
        ``coefficient`` may be one number or one per layer.
        """
        return steer(model, [self], [coefficient], mode=mode, start=start,
                     thresholds=[thresholds] if thresholds is not None else None, cap=cap)


def _run_refs(run_id: str, *, experiment: str, uri: str | None) -> tuple[dict[int, Any], int]:
    """The vectors of one extraction run (a steering run's id leads to the runs of the vectors it steered)."""
    from traitlab.tracking.registry import VectorRef
    from traitlab.tracking.store import ensure_store

    client, _ = ensure_store(uri, experiment)
    try:
        run = client.get_run(run_id)
    except Exception as e:  # noqa: BLE001 - MLflow raises several types for an unknown id
        raise ConfigError("run_id", f"no MLflow run {run_id!r} ({str(e).splitlines()[0]})") from None
    tags = run.data.tags
    if tags.get("traitlab.stage") == "steer" and tags.get("traitlab.vector_run_id"):
        refs: dict[int, Any] = {}
        best = None
        for source in tags["traitlab.vector_run_id"].split(","):  # one per extraction run it used
            more, b = _run_refs(source, experiment=experiment, uri=uri)
            refs.update({k: v for k, v in more.items() if k not in refs})
            best = b if best is None else best
        return refs, int(best) if best is not None else min(refs)
    if tags.get("traitlab.stage") != "extract" or run.info.status != "FINISHED":
        raise ConfigError("run_id", f"run {run_id!r} is a {tags.get('traitlab.stage', 'non-traitlab')} run "
                                    f"({run.info.status}); expected a finished extraction (or steering) run")
    layers = sorted(int(x) for x in tags.get("layers", "").split(",") if x != "")
    refs = {lyr: VectorRef(run_id, tags["trait"], tags["model"], tags["method"], tags["component"], tags["position"],
                           lyr) for lyr in layers}
    if not refs:
        raise ConfigError("run_id", f"extraction run {run_id!r} lists no layers")
    best = int(tags["best_layer"]) if tags.get("best_layer", "").isdigit() else layers[0]
    return refs, best


def _depth(model: Any, fallback: int | None) -> int | None:
    """Number of layers of ``model`` when it names a known model or is a ModelSpec (read from its config, no
    weights), else ``fallback``."""
    from traitlab.models.loading import KNOWN_MODELS, ModelSpec, model_config

    spec = KNOWN_MODELS.get(model) if isinstance(model, str) else getattr(model, "spec", model)
    if not isinstance(spec, ModelSpec):
        return fallback
    try:
        return int(model_config(spec).num_hidden_layers)
    except Exception:  # noqa: BLE001 - an unreadable config only costs the range check its upper bound
        return fallback


def _layers_of(layers: Any, n_layers: int, best: int | None) -> list[int]:
    from traitlab.core.layers import LayerSpecError, parse_layers

    try:
        return parse_layers(layers, n_layers, best=best)
    except LayerSpecError as e:
        raise ConfigError("layers", str(e)) from None


def _run_info(run_id: str, uri: str | None, experiment: str) -> tuple[dict[str, str], dict[str, str]]:
    from traitlab.tracking.store import ensure_store

    client, _ = ensure_store(uri, experiment)
    run = client.get_run(run_id)
    return run.data.tags, run.data.params


def best_coefficients(refs: Sequence[Any], *, experiment: str = "traitlab", uri: str | None = None
                      ) -> dict[int, float]:
    """Per layer, the steering study's best coherent coefficient of exactly these vectors (``VectorRef`` s:
    same extraction run, method, component, position and layer), read through the registry's
    ``steering_results``, the one place steering results are read. When several studies steered the same
    vector, the one with the largest best delta wins (the order the registry ranks vectors by); a layer no
    study found a coherent coefficient for has no entry."""
    from traitlab.tracking.registry import steering_results

    if not refs:
        return {}
    found: dict[int, tuple[float, float]] = {}  # layer -> (best_delta, best_coefficient)
    for row in steering_results(refs[0].trait, refs[0].model, experiment=experiment, uri=uri):
        for r in refs:  # a steer run lists the extraction runs of its vectors, comma-joined
            same = r.run_id in str(row.get("vector_run_id", "")).split(",") and (
                row["method"], row["component"], row["position"], int(row["layer"])) == (
                r.method, r.component, r.position, r.layer)
            coef = row.get("coefficient")
            if not same or coef is None or not math.isfinite(float(coef)):
                continue
            delta = float(row.get("delta", float("-inf")))
            if r.layer not in found or delta > found[r.layer][0]:
                found[r.layer] = (delta, float(coef))
    return {layer: c for layer, (_, c) in sorted(found.items())}


# ------------------------------------------------------------------------------------------ composing


def _module(model: Any) -> nn.Module:
    inner = getattr(model, "model", None)
    if not isinstance(model, nn.Module) and isinstance(inner, nn.Module):
        return inner  # a LoadedModel
    if not isinstance(model, nn.Module):
        raise ConfigError("model", f"expected a torch model or a traitlab LoadedModel, got {type(model).__name__}")
    return model


def _per_layer(coefficient: float | Mapping[int, float], layers: Sequence[int], who: str) -> dict[int, float]:
    if isinstance(coefficient, Mapping):
        missing = [lyr for lyr in layers if lyr not in coefficient]
        if missing:
            raise ConfigError("coefficient", f"{who}: no coefficient for layers {missing}")
        return {lyr: float(coefficient[lyr]) for lyr in layers}
    return dict.fromkeys(layers, float(coefficient))


def _hooks(model: Any, vectors: Sequence[SteeringVector], coefficients: Sequence[float | Mapping[int, float]],
           mode: str, start: int | None, thresholds: Sequence[Mapping[int, float]] | None, cap: str) -> list[Any]:
    """The core hooks (not yet entered) that apply ``vectors`` together; shapes are checked here.

    Several vectors compose: in the additive modes the deltas ``coefficient_i * v_i`` sharing a layer are
    summed (weights are folded into the coefficients by the caller); ablation and capping apply one hook per
    vector and layer, in order.
    """
    from traitlab.core.hooks import (
        AblationHook,
        ActivationCappingHook,
        MultiLayerSteering,
        PerPositionSteeringHook,
    )

    if mode not in MODES:
        raise ConfigError("mode", f"{mode!r} is not one of {', '.join(MODES)}")
    if len(coefficients) != len(vectors):
        raise ConfigError("coefficient", f"{len(coefficients)} coefficients for {len(vectors)} vectors")
    if not vectors:
        raise ConfigError("vectors", "nothing to apply: no vectors given")
    components = {v.component for v in vectors}
    if len(components) != 1:
        raise ConfigError("component", f"vectors of different components {sorted(components)} cannot be composed")
    component = components.pop()
    net = _module(model)
    if mode in ("add", "add_response"):
        deltas: dict[int, Tensor] = {}
        for v, c in zip(vectors, coefficients, strict=True):
            for layer, coef in _per_layer(c, v.layers, v.label).items():
                d = coef * v.directions[layer]
                deltas[layer] = deltas[layer] + d if layer in deltas else d
        if mode == "add":
            return [MultiLayerSteering(net, [(layer, d, 1.0) for layer, d in deltas.items()], component=component)]
        if start is None or start < 0:
            raise ConfigError("start", f"mode=add_response needs start >= 0 (first steered position), got {start}")
        return [PerPositionSteeringHook(net, layer, d, 1.0, (int(start), None), component=component)
                for layer, d in deltas.items()]
    if mode == "ablate":
        return [AblationHook(net, layer, v.directions[layer], component=component)
                for v in vectors for layer in v.layers]
    if cap not in CAP_SIDES:
        raise ConfigError("cap", f"{cap!r} is not one of {', '.join(CAP_SIDES)}")
    if thresholds is None or len(thresholds) != len(vectors):
        raise ConfigError("thresholds", "mode=cap needs one {layer: threshold} mapping per vector")
    hooks = []
    for v, taus in zip(vectors, thresholds, strict=True):
        for layer in v.layers:
            if layer not in taus:
                raise ConfigError("thresholds", f"{v.label}: no cap threshold for layer {layer}")
            hooks.append(ActivationCappingHook(net, layer, v.directions[layer], float(taus[layer]),
                                               component=component, mode="ceiling" if cap == "ceiling" else "floor"))
    return hooks


class Steering:
    """Hooks applied together: entering registers all of them, leaving removes all (also on error)."""

    def __init__(self, hooks: list[Any]):
        self.hooks = hooks
        self._stack: ExitStack | None = None

    def __enter__(self) -> Steering:
        stack = ExitStack()
        try:
            for hook in self.hooks:
                stack.enter_context(hook)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc: Any) -> bool:
        stack, self._stack = self._stack, None
        return bool(stack.__exit__(*exc)) if stack is not None else False


def steer(
    model: Any,
    vectors: Sequence[SteeringVector],
    coefficients: Sequence[float | Mapping[int, float]],
    *,
    mode: str = "add",
    start: int | None = None,
    thresholds: Sequence[Mapping[int, float]] | None = None,
    cap: str = "ceiling",
) -> Steering:
    """Several vectors at once: ``with steer(model, [a, b], [4.0, 2.0]): ...``. Bad settings fail here, before
    any hook is registered; the model is restored when the block ends."""
    return Steering(_hooks(model, vectors, coefficients, mode, start, thresholds, cap))


@dataclass
class SteeringSetup:
    """A complete steering configuration: vectors, their weights, one coefficient and a mode.

    ``coefficient`` is a number or ``"best"`` (each layer's ``best_coefficients`` entry). Vector i is applied
    with ``weight_i * coefficient`` (per layer for ``best``); ablate and cap ignore both. ``thresholds`` (one
    {layer: tau} per vector) are needed by ``mode="cap"``.
    """

    vectors: list[SteeringVector]
    weights: list[float] | None = None
    coefficient: float | str = 1.0
    mode: str = "add"
    thresholds: list[dict[int, float]] | None = None
    cap: str = "ceiling"

    def __post_init__(self) -> None:
        if not self.vectors:
            raise ConfigError("vectors", "no vectors to apply")
        self.weights = [1.0] * len(self.vectors) if self.weights is None else [float(w) for w in self.weights]
        if len(self.weights) != len(self.vectors):
            raise ConfigError("weights", f"{len(self.weights)} weights for {len(self.vectors)} vectors; give one each")
        if self.mode not in MODES:
            raise ConfigError("mode", f"{self.mode!r} is not one of {', '.join(MODES)}")
        if self.cap not in CAP_SIDES:
            raise ConfigError("cap.side", f"{self.cap!r} is not one of {', '.join(CAP_SIDES)}")
        if isinstance(self.coefficient, str):
            if self.coefficient.strip().lower() != "best":
                try:
                    self.coefficient = float(self.coefficient)
                except ValueError:
                    raise ConfigError("coefficient", f"{self.coefficient!r} is not a number or best") from None
            else:
                self.coefficient = "best"
                if self.mode in ("add", "add_response"):
                    for v in self.vectors:
                        missing = [lyr for lyr in v.layers if lyr not in v.best_coefficients]
                        if missing:
                            raise ConfigError("coefficient", f"coefficient=best: {v.label} has no steering result at "
                                                             f"layers {missing}; run launchers/steer.py on them first "
                                                             "or give coefficient=<number>")

    @property
    def additive(self) -> bool:
        return self.mode in ("add", "add_response")

    @property
    def component(self) -> str:
        """The component every vector steers (vectors of different components cannot be composed)."""
        components = {v.component for v in self.vectors}
        if len(components) != 1:
            raise ConfigError("component", f"vectors of different components {sorted(components)} cannot be composed")
        return components.pop()

    def coefficients(self) -> list[float | dict[int, float]]:
        """Per vector: weight x coefficient (a {layer: value} mapping for ``best``)."""
        assert self.weights is not None
        if self.coefficient == "best":
            return [{lyr: w * v.best_coefficients[lyr] for lyr in v.layers}
                    for v, w in zip(self.vectors, self.weights, strict=True)]
        return [w * float(self.coefficient) for w in self.weights]

    def apply(self, model: Any, start: int | None = None) -> Steering:
        return steer(model, self.vectors, self.coefficients(), mode=self.mode, start=start,
                     thresholds=self.thresholds, cap=self.cap)

    def describe(self) -> str:
        """One line: what is applied, e.g. ``starter/optimism L12 x 8 (add)``."""
        assert self.weights is not None
        if not self.additive:
            how = f"{self.cap} cap" if self.mode == "cap" else "ablated"
            return " + ".join(v.label for v in self.vectors) + f" ({how})"
        parts = []
        for v, w, c in zip(self.vectors, self.weights, self.coefficients(), strict=True):
            coef = ",".join(f"{x:.3g}" for x in c.values()) if isinstance(c, dict) else f"{c:.3g}"
            parts.append(f"{v.label} x {coef}" + (f" (weight {w:g})" if w != 1 else ""))
        return " + ".join(parts) + f" ({self.mode})"


# ------------------------------------------------------------------------------------------ metadata


def _parse(value: str) -> Any:
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value


__all__ = ["MODES", "Steering", "SteeringSetup", "SteeringVector", "best_coefficients", "steer"]
