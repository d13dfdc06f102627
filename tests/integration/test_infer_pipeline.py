"""Stage 3 on the real SmolLM2 with a real temp MLflow store: vectors from a quick extraction, then
stream / capture -> reproject / from_responses inference, massive-dim cleaning, centering, and the
analyses (geometry, logit lens, model diff, the score analyses from an inference run's JSONs, response-level
correlation and clause spans over two prompt sets, neutral-set calibration of massive activations)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from traitlab.config.analyze import AnalysisConfig, AnalyzeConfig
from traitlab.config.infer import InferConfig, InferenceConfig, MassiveConfig
from traitlab.config.schema import ExtractConfig, GenerationConfig, MethodConfig, TrackingConfig, TraitConfig
from traitlab.core.analysis import project_tokens
from traitlab.core.components import unembedding
from traitlab.core.massive import zero_dims
from traitlab.io import load_tensors, read_json
from traitlab.pipelines.analyze import run_analyze
from traitlab.pipelines.extract import run_extract
from traitlab.pipelines.infer import calibration_path, run_infer
from traitlab.tracking.registry import fetch_vector, find_vectors

pytestmark = pytest.mark.slow

TRAITS = ["starter/optimism", "starter/refusal"]
EXP = "infer-it"


@pytest.fixture(scope="module")
def store(tmp_path_factory, smollm2):
    """A temp MLflow store holding mean_diff vectors of two traits at layers 10 and 12."""
    tmp = tmp_path_factory.mktemp("infer_store")
    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("TRAITLAB_OUTPUTS", str(tmp / "outputs"))
        for trait in TRAITS:
            run_extract(
                ExtractConfig(
                    trait=TraitConfig(name=trait),
                    method=MethodConfig(name="mean_diff"),
                    layers="10,12",
                    tracking=TrackingConfig(experiment=EXP),
                ),
                lm=smollm2,
            )
        yield uri


def _cfg(**kw) -> InferConfig:
    inference = kw.pop(
        "inference", InferenceConfig(max_prompts=2, generation=GenerationConfig(max_new_tokens=16))
    )
    return InferConfig(
        **{
            "prompt_set": "smoke",
            "layers": "10,12",
            "tracking": TrackingConfig(experiment=EXP),
            "inference": inference,
            **kw,
        }
    )


def _scores(res, trait: str, layer: int, mode: str) -> list[torch.Tensor]:
    return [torch.tensor(r["traits"][trait]["layers"][str(layer)][mode]) for r in res.records]


@pytest.fixture(scope="module")
def stream(store, smollm2):
    return run_infer(_cfg(), lm=smollm2)


def test_stream_end_to_end(store, stream, smollm2):
    res = stream
    assert not res.skipped and res.traits == TRAITS
    assert res.layers == {t: [10, 12] for t in TRAITS}
    assert [r["prompt_id"] for r in res.records] == ["s01", "s02"]
    for rec in res.records:
        n = len(rec["token_ids"])
        assert len(rec["tokens"]) == n and 0 < rec["n_prompt_tokens"] < n
        assert rec["tokens"] == [smollm2.tokenizer.decode([i]) for i in rec["token_ids"]]
        for trait in TRAITS:
            for layer in ("10", "12"):
                e = rec["traits"][trait]["layers"][layer]
                raw, norms = torch.tensor(e["raw"]), torch.tensor(rec["norms"][layer])
                assert e["mode"] == "normalized" and e["scores"] == e["normalized"] and len(raw) == n
                # normalized = raw / mean token norm over the response; cosine = raw / own norm
                mean_norm = norms[rec["n_prompt_tokens"] :].mean()
                torch.testing.assert_close(
                    torch.tensor(e["normalized"]), raw / mean_norm, rtol=1e-5, atol=1e-6
                )
                torch.testing.assert_close(torch.tensor(e["cosine"]), raw / norms, rtol=1e-5, atol=1e-6)
                assert e["vector"]["layer"] == int(layer) and e["vector"]["method"] == "mean_diff"
    client = MlflowClient(store)
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["traitlab.stage"] == "infer"
    assert run.data.tags["traits"] == ",".join(TRAITS) and run.data.tags["layers"] == "10,12"
    art = Path(run.info.artifact_uri.removeprefix("file://"))
    for p in (
        "views/index.html",
        "views/prompts/s01.html",
        "views/prompts/s02.html",
        "projections/s01.json",
        "figures/trajectories/s01.png",
        "figures/heatmaps/s02.png",
        "tables/summary.json",
        "massive/calibration.json",
        "config/resolved.yaml",
    ):
        assert (art / p).is_file(), p
    assert res.first_page == "views/prompts/s01.html"
    assert res.first_page_uri == f"{run.info.artifact_uri}/views/prompts/s01.html"
    assert read_json(art / "projections/s01.json") == res.records[0]
    page = (art / "views/prompts/s01.html").read_text()
    first_score = res.records[0]["traits"][TRAITS[0]]["layers"]["10"]["scores"][-1]
    assert f'data-score="{first_score!r}"' in page
    # metric per trait with step = layer: mean response score over both prompts
    hist = {m.step: m.value for m in client.get_metric_history(res.run_id, f"mean_score/{TRAITS[1]}")}
    want = torch.cat(
        [
            s[r["n_prompt_tokens"] :]
            for s, r in zip(_scores(res, TRAITS[1], 12, "scores"), res.records, strict=True)
        ]
    ).mean()
    assert sorted(hist) == [10, 12] and hist[12] == pytest.approx(float(want), rel=1e-5)
    # the model's massive-activation calibration exists (all 30 layers) and was logged
    cal = read_json(calibration_path(read_json(art / "massive/calibration.json")["model_key"], "residual"))
    assert sorted(map(int, cal["layers"])) == list(range(30))


def test_rerun_skips_and_force_redoes(stream, smollm2):
    again = run_infer(_cfg(), lm=smollm2)
    assert again.skipped and again.run_id == stream.run_id and again.first_page == "views/prompts/s01.html"
    forced = run_infer(_cfg(force=True), lm=smollm2)
    assert not forced.skipped and forced.run_id != stream.run_id
    for trait in TRAITS:  # deterministic: same scores
        for a, b in zip(_scores(stream, trait, 12, "raw"), _scores(forced, trait, 12, "raw"), strict=True):
            # float32 CPU kernels may reorder sums between two passes of the same text (seen up to 2e-4
            # relative when the suite runs under load); a real change in scores is orders of magnitude larger
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_capture_then_reproject_equals_hook_scores(store, stream, smollm2, monkeypatch):
    cap = run_infer(_cfg(mode="capture"), lm=smollm2)
    assert cap.capture_dir and (Path(cap.capture_dir) / "manifest.json").is_file()
    manifest = read_json(Path(cap.capture_dir) / "manifest.json")
    assert manifest["layers"] == [10, 12] and len(manifest["items"]) == 2
    tensors, _ = load_tensors(Path(cap.capture_dir) / manifest["items"][0]["file"])  # checksummed
    assert tensors["layer_010"].shape == (len(manifest["items"][0]["token_ids"]), 576)

    def no_model(*a, **k):
        raise AssertionError("reproject must not load the model")

    monkeypatch.setattr("traitlab.pipelines.infer.load_model", no_model)
    rep = run_infer(_cfg(mode="reproject"))
    assert rep.mode == "reproject" and rep.first_page == "views/prompts/s01.html"
    assert [r["token_ids"] for r in rep.records] == [r["token_ids"] for r in stream.records]
    for trait in TRAITS:
        for layer in (10, 12):
            for mode in ("raw", "normalized", "cosine"):
                for a, b in zip(
                    _scores(stream, trait, layer, mode), _scores(rep, trait, layer, mode), strict=True
                ):
                    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)  # see the rerun test

    # clean_massive and centered re-projected offline equal the math on the captured activations
    inf = InferenceConfig(
        max_prompts=2,
        generation=GenerationConfig(max_new_tokens=16),
        clean_massive=True,
        centered=True,
        score_mode="raw",
    )
    clean = run_infer(_cfg(mode="reproject", inference=inf))
    dims = clean.massive_dims[12]
    assert dims, "SmolLM2 has massive dims at layer 12"
    ref = next(r for r in find_vectors(TRAITS[0], "smollm2_135m", experiment=EXP, layer=12))
    v = fetch_vector(ref, experiment=EXP)
    acts = load_tensors(Path(cap.capture_dir) / manifest["items"][0]["file"])[0]["layer_012"]
    raw, _ = project_tokens(acts, zero_dims(v, dims))
    entry = clean.records[0]["traits"][TRAITS[0]]["layers"]["12"]
    baseline = ref.metrics["baseline"] / float(v.norm())
    assert entry["baseline"] == pytest.approx(baseline) and entry["centered"]
    torch.testing.assert_close(torch.tensor(entry["raw"]), raw[:, 0] - baseline, atol=1e-4, rtol=1e-5)


def test_from_responses_scores_the_given_text(store, smollm2, tmp_path):
    f = tmp_path / "items.json"
    f.write_text(
        json.dumps(
            [
                {"id": "a", "prompt": "How was your day?", "response": "Wonderful, thanks!"},
                {"id": "b", "prompt": "Can you help me?", "response": "No, I can't help with that."},
            ]
        )
    )
    res = run_infer(
        _cfg(mode="from_responses", responses=str(f), traits=[TRAITS[1]], layers="12"), lm=smollm2
    )
    assert res.traits == [TRAITS[1]] and [r["response"] for r in res.records] == [
        "Wonderful, thanks!",
        "No, I can't help with that.",
    ]
    rec = res.records[1]
    assert "".join(rec["tokens"][rec["n_prompt_tokens"] :]) == "No, I can't help with that."
    # the refusal vector scores the refusal higher than the cheerful answer
    means = [
        torch.tensor(r["traits"][TRAITS[1]]["layers"]["12"]["scores"][r["n_prompt_tokens"] :]).mean()
        for r in res.records
    ]
    assert means[1] > means[0]


def _analyze(name: str, **kw) -> AnalyzeConfig:
    inference = kw.pop(
        "inference", InferenceConfig(max_prompts=2, generation=GenerationConfig(max_new_tokens=16))
    )
    return AnalyzeConfig(
        **{
            "analysis": AnalysisConfig(name=name, **kw.pop("analysis", {})),
            "prompt_set": "smoke",
            "layers": "10,12",
            "tracking": TrackingConfig(experiment=EXP),
            "inference": inference,
            **kw,
        }
    )


def test_geometry_and_logit_lens(store, smollm2):
    geo = run_analyze(_analyze("geometry"))
    vecs = {
        t: fetch_vector(find_vectors(t, "smollm2_135m", experiment=EXP, layer=10)[0], experiment=EXP)
        for t in TRAITS
    }
    want = float(torch.nn.functional.cosine_similarity(vecs[TRAITS[0]], vecs[TRAITS[1]], dim=0))
    m = geo.values["cosine"][10]
    assert m["names"] == TRAITS and m["matrix"][0][1] == pytest.approx(want, abs=1e-5)
    assert m["matrix"][0][0] == pytest.approx(1.0) and geo.values["layers"] == [10, 12]
    client = MlflowClient(store)
    files = {f.path for f in client.list_artifacts(geo.run_id, "figures/geometry")}
    assert {"figures/geometry/cosine_L010.png", "figures/geometry/pca_L012.png"} <= files

    lens = run_analyze(_analyze("logit_lens", analysis={"top_k": 5}, layers="12"), lm=smollm2)
    rows = lens.values["rows"]
    assert len(rows) == 2 * 1 * 2 * 5  # traits x layers x directions x k
    norm, weight = unembedding(smollm2.model)
    v = fetch_vector(find_vectors(TRAITS[1], "smollm2_135m", experiment=EXP, layer=12)[0], experiment=EXP)
    with torch.no_grad():
        logits = weight @ norm((v / v.norm()).unsqueeze(0))[0]
    top = [r for r in rows if r["trait"] == TRAITS[1] and r["direction"] == "+"]
    assert [r["token_id"] for r in top] == torch.topk(logits, 5).indices.tolist()
    assert top[0]["logit"] == pytest.approx(float(logits.max()), rel=1e-4)
    assert {f.path for f in client.list_artifacts(lens.run_id, "tables")} >= {
        "tables/logit_lens.json",
        "tables/logit_lens.md",
    }


def test_model_diff_base_vs_base_is_exactly_zero(store, smollm2):
    res = run_analyze(_analyze("model_diff", analysis={"window": 3, "top_n": 2}), lm=smollm2)
    assert res.values["d"] == {t: {10: 0.0, 12: 0.0} for t in TRAITS}
    assert all(r["mean_delta"] == 0.0 for r in res.values["rows"])
    assert all(s["mean"] == 0.0 for s in res.values["spans"])
    client = MlflowClient(store)
    hist = client.get_metric_history(res.run_id, f"cohens_d/{TRAITS[0]}")
    assert sorted((m.step, m.value) for m in hist) == [(10, 0.0), (12, 0.0)]
    files = {f.path for f in client.list_artifacts(res.run_id, "model_diff")}
    assert "model_diff/s01.json" in files


def test_score_analyses_from_an_inference_run(store, stream):
    src = {"source_run": stream.run_id}
    corr = run_analyze(_analyze("correlation", analysis={**src, "max_lag": 2}))
    assert corr.values["names"] == [f"{t} L{ly}" for t in TRAITS for ly in (10, 12)]
    assert corr.values["matrix"][0][0] == pytest.approx(1.0)
    assert {r["lag"] for r in corr.values["rows"]} == {-2, -1, 0, 1, 2}
    dyn = run_analyze(_analyze("dynamics", analysis=src))
    first = next(
        r
        for r in dyn.values["rows"]
        if r["prompt_id"] == "s01" and r["trait"] == TRAITS[0] and r["layer"] == 10
    )
    s = torch.tensor(stream.records[0]["traits"][TRAITS[0]]["layers"]["10"]["scores"])
    s = s[stream.records[0]["n_prompt_tokens"] :]
    assert first["mean_abs_velocity"] == pytest.approx(float((s[1:] - s[:-1]).abs().mean()), rel=1e-6)
    spans = run_analyze(
        _analyze("top_spans", analysis={**src, "window": 3, "top_n": 2}, traits=[TRAITS[0]], layers="12")
    )
    top = [r for r in spans.values["rows"] if r["direction"] == "top"]
    assert len(top) == 2 and top[0]["mean"] >= top[1]["mean"] and top[0]["trait"] == TRAITS[0]
    windows = {}
    for rec in stream.records:
        resp = torch.tensor(rec["traits"][TRAITS[0]]["layers"]["12"]["scores"][rec["n_prompt_tokens"] :])
        windows[rec["prompt_id"]] = resp.unfold(0, 3, 1).mean(-1)
    best_pid = max(windows, key=lambda pid: float(windows[pid].max()))
    assert top[0]["prompt_id"] == best_pid
    assert top[0]["mean"] == pytest.approx(float(windows[best_pid].max()), rel=1e-6)
    assert top[0]["mean"] == pytest.approx(float(windows[best_pid][top[0]["start"]]), rel=1e-6)


def test_unknown_trait_fails_with_a_hint(store, smollm2):
    from traitlab.errors import ConfigError

    with pytest.raises(ConfigError, match="launchers/extract.py trait=starter/evil"):
        run_infer(replace(_cfg(), traits=["starter/evil"]), lm=smollm2)


# ------------------------------------------------------------------------- analysis breadth (two prompt sets)

SHORT = {"max_prompts": 4, "generation": GenerationConfig(max_new_tokens=16)}


@pytest.fixture(scope="module")
def two_sets(store, smollm2):
    """Inference runs over the smoke and starter sets (4 prompts each): the records the analyses read back."""
    return [run_infer(_cfg(prompt_set=name, inference=InferenceConfig(**SHORT)), lm=smollm2) for name in ("smoke", "starter")]


def _response_means(records, trait: str, layer: int) -> list[float]:
    out = []
    for r in records:
        s = [x for x in r["traits"][trait]["layers"][str(layer)]["scores"][r["n_prompt_tokens"] :] if x is not None]
        out.append(sum(s) / len(s))
    return out


def test_response_correlation_over_two_runs_matches_numpy(store, two_sets):
    records = [r for res in two_sets for r in res.records]
    res = run_analyze(_analyze("response_correlation", analysis={"source_run": [x.run_id for x in two_sets]},
                               layers="12"))
    row = next(r for r in res.values["rows"] if {r["a"], r["b"]} == {f"{t} L12" for t in TRAITS})
    x, y = (_response_means(records, t, 12) for t in TRAITS)
    r = float(np.corrcoef(x, y)[0, 1])
    half = 1.959964 / math.sqrt(len(x) - 3)
    assert row["n"] == 8 and row["r"] == pytest.approx(r, abs=1e-6)
    assert (row["low"], row["high"]) == pytest.approx((math.tanh(math.atanh(r) - half),
                                                      math.tanh(math.atanh(r) + half)), abs=1e-6)
    client = MlflowClient(store)
    arts = {f.path for f in client.list_artifacts(res.run_id, "figures/response_correlation")}
    assert {"figures/response_correlation/matrix.png", "figures/response_correlation/intervals.png"} <= arts
    hist = client.get_metric_history(res.run_id, f"layer/response_r/{TRAITS[0]} vs {TRAITS[1]}")
    assert [(m.step, m.value) for m in hist] == [(12, pytest.approx(r, abs=1e-4))]
    assert client.get_run(res.run_id).data.metrics["n_responses"] == 8
    assert "noise" in client.get_run(res.run_id).data.tags["mlflow.note.content"] or row["excludes_zero"]


def test_clause_spans_across_two_sets_fresh_equal_read_back(store, smollm2, two_sets):
    """top_spans unit=clause over prompt_set=[smoke,starter] (a fresh pass) finds the same clauses, means and
    set tags as over the two inference runs' records, and each clause's mean is its tokens' mean score."""
    spans = {"unit": "clause", "top_n": 3, "min_tokens": 3}
    read = run_analyze(_analyze("top_spans", analysis={**spans, "source_run": [x.run_id for x in two_sets]},
                                traits=[TRAITS[0]], layers="12"))
    fresh = run_analyze(_analyze("top_spans", analysis=spans, prompt_set=["smoke", "starter"], traits=[TRAITS[0]],
                                 layers="12", inference=InferenceConfig(**SHORT)), lm=smollm2)
    key = [(r["direction"], r["source"], r["prompt_id"], r["start"], r["stop"], r["text"]) for r in read.values["rows"]]
    assert key == [(r["direction"], r["source"], r["prompt_id"], r["start"], r["stop"], r["text"])
                   for r in fresh.values["rows"]]
    assert [r["mean"] for r in fresh.values["rows"]] == pytest.approx([r["mean"] for r in read.values["rows"]],
                                                                       rel=1e-3, abs=1e-4)
    by_id = {(r["source"], r["prompt_id"]): r for res in two_sets for r in res.records}
    top = [r for r in read.values["rows"] if r["direction"] == "top"]
    bottom = [r for r in read.values["rows"] if r["direction"] == "bottom"]
    assert len(top) == 3 and top[0]["mean"] >= top[-1]["mean"] > bottom[-1]["mean"]
    for row in top + bottom:
        rec = by_id[(row["source"], row["prompt_id"])]
        resp_tokens = rec["tokens"][rec["n_prompt_tokens"] :]
        scores = rec["traits"][TRAITS[0]]["layers"]["12"]["scores"][rec["n_prompt_tokens"] :]
        assert row["text"] == "".join(resp_tokens[row["start"] : row["stop"]]) and row["stop"] - row["start"] >= 3
        assert row["mean"] == pytest.approx(sum(scores[row["start"] : row["stop"]]) / (row["stop"] - row["start"]))
    assert {(r["source"], r["n_responses"]) for r in read.values["by_source"]} == {("smoke", 4), ("starter", 4)}
    files = {f.path for f in MlflowClient(store).list_artifacts(read.run_id, "tables")}
    assert {"tables/top_spans.json", "tables/top_spans.md", "tables/top_spans_by_source.json"} <= files


def test_analyze_fresh_pass_cleans_massive_dims_like_infer(store, smollm2):
    """inference.clean_massive=true in a fresh analyze pass scores with the cleaned vectors, as infer does."""
    inf = InferenceConfig(max_prompts=2, generation=GenerationConfig(max_new_tokens=16), clean_massive=True)
    clean = run_infer(_cfg(inference=inf, traits=[TRAITS[0]], layers="12"), lm=smollm2)
    spans = run_analyze(_analyze("top_spans", analysis={"window": 3, "top_n": 1}, traits=[TRAITS[0]], layers="12",
                                 inference=inf), lm=smollm2)
    top = next(r for r in spans.values["rows"] if r["direction"] == "top")
    best = max(float(torch.tensor(r["traits"][TRAITS[0]]["layers"]["12"]["scores"][r["n_prompt_tokens"]:])
                     .unfold(0, 3, 1).mean(-1).max()) for r in clean.records)
    assert all(r["clean_massive"] for r in clean.records)
    assert top["mean"] == pytest.approx(best, rel=1e-3, abs=1e-4)


# ------------------------------------------------------------------------------------ neutral calibration

NEUTRAL = MassiveConfig(set="neutral", max_tokens=2000, max_new_tokens=12)


def test_neutral_calibration_finds_smollm2s_first_token_dim_and_infer_uses_it(store, smollm2, stream):
    res = run_analyze(_analyze("calibration", inference=InferenceConfig(massive=NEUTRAL)), lm=smollm2)
    dims, rows = res.values["dims"], res.values["rows"]
    assert dims[12] == [507] and all(dims[ly] == [507] for ly in range(11, 28))
    at12 = next(r for r in rows if r["layer"] == 12)
    assert at12["ratio_to_median"] > 300 and at12["peak_position"] == 0  # SmolLM2's first-token outlier
    assert {r["dim"] for r in rows} == {507} and {r["peak_position"] for r in rows} == {0}
    record = res.values["record"]
    # `neutral` is datasets/neutral/default.jsonl (everyday prompts with plain answers) when the project has it
    # the budget stops the prefill after the batch (8 texts of under 128 tokens) that reaches 2000 tokens
    assert record["set"] == "neutral:default" and record["n_texts"] >= 20 and 2000 <= record["n_tokens"] < 2000 + 8 * 128
    client = MlflowClient(store)
    run = client.get_run(res.run_id)
    assert run.data.tags["massive_calibration"] == "neutral:neutral:default"
    assert run.data.tags["calibration_set"] == "neutral:default"
    hist = {m.step: m.value for m in client.get_metric_history(res.run_id, "layer/massive_dims")}
    assert hist[12] == 1 and hist[0] == 0
    files = {f.path for f in client.list_artifacts(res.run_id, "tables")}
    assert "tables/massive_dims.json" in files and "dim 507" in run.data.tags["mlflow.note.content"]
    # stored per model identity: infer with calibration=neutral reuses it and cleans dim 507 out of the vectors
    inf = InferenceConfig(max_prompts=2, generation=GenerationConfig(max_new_tokens=16), massive=NEUTRAL,
                          calibration="neutral", clean_massive=True)
    clean = run_infer(_cfg(inference=inf), lm=smollm2)
    assert clean.massive_dims == dims and client.get_run(clean.run_id).data.tags["massive_calibration"] == "neutral:neutral:default"
    for before, after in zip(stream.records, clean.records, strict=True):
        assert after["clean_massive"] and after["token_ids"] == before["token_ids"]
        raw_b, raw_a = (r["traits"][TRAITS[0]]["layers"]["12"]["raw"] for r in (before, after))
        assert abs(raw_b[0] - raw_a[0]) > 1.0  # the first token's 25000-sized dim 507 no longer counts
    # reproject (no model) finds the stored neutral calibration by the capture's model identity
    run_infer(_cfg(mode="capture"), lm=smollm2)
    rep = run_infer(_cfg(mode="reproject", inference=inf))
    assert rep.massive_dims == dims
    for a, b in zip(clean.records, rep.records, strict=True):
        torch.testing.assert_close(torch.tensor(a["traits"][TRAITS[0]]["layers"]["12"]["raw"]),
                                   torch.tensor(b["traits"][TRAITS[0]]["layers"]["12"]["raw"]), atol=1e-3, rtol=1e-3)
    from traitlab.errors import ConfigError

    with pytest.raises(ConfigError, match="inference.calibration: no neutral calibration"):
        run_infer(_cfg(mode="reproject", inference=replace(inf, massive=replace(NEUTRAL, set="starter"))))
