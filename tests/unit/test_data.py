"""Trait and prompt-set loaders: every format loads, every malformed input names file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from traitlab.data import (
    MAX_LINE_BYTES,
    list_prompt_sets,
    list_traits,
    load_examples,
    load_prompt_set,
    load_trait,
    resolve_trait_dir,
)
from traitlab.errors import ConfigError, DataError


def jsonl(*rows: object) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def make_trait(root: Path, rel: str, files: dict[str, str | bytes]) -> Path:
    d = root / rel
    d.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if isinstance(content, bytes):
            (d / name).write_bytes(content)
        else:
            (d / name).write_text(content, encoding="utf-8")
    return d


PAIR = {
    "positive.jsonl": jsonl({"prompt": "a", "system_prompt": "be x", "response": "xx"}, {"prompt": "b"}),
    "negative.jsonl": jsonl({"prompt": "a", "system_prompt": "be not x", "response": "yy"}, {"prompt": "b"}),
}


def data_error(trait_dir: Path, root: Path | None = None) -> str:
    with pytest.raises(DataError) as e:
        load_trait(trait_dir, root=root or trait_dir.parent)
    return str(e.value)


# ---------------------------------------------------------------- formats


def test_jsonl_pairs_load_with_all_fields(tmp_path):
    d = make_trait(tmp_path, "cat/t", {**PAIR, "definition.txt": "  rubric  \n",
                                       "steering.json": '{"questions": ["q1", "q2"], "direction": "negative",'
                                                        ' "eval_prompt": "rate {answer}"}'})
    t = load_trait(d, root=tmp_path)
    assert (t.name, t.category, t.qualified_name, t.paired) == ("t", "cat", "cat/t", True)
    assert t.positive[0].prompt == "a" and t.positive[0].system_prompt == "be x" and t.positive[0].response == "xx"
    assert t.positive[1].system_prompt is None and t.positive[1].response is None
    assert t.negative[0].response == "yy"
    assert t.positive[1].source == "positive.jsonl:2"
    assert t.definition == "rubric"
    assert t.steering is not None
    assert (t.steering.questions, t.steering.direction, t.steering.eval_prompt) == (["q1", "q2"], -1, "rate {answer}")


def test_json_is_cartesian_product_prompts_outer(tmp_path):
    doc = {"prompts": ["p1", "p2", "p3"], "system_prompts": ["s1", "s2"]}
    d = make_trait(tmp_path, "c/t", {"positive.json": json.dumps(doc, indent=1),
                                     "negative.json": json.dumps({**doc, "system_prompts": ["n1", "n2"]})})
    t = load_trait(d, root=tmp_path)
    assert len(t.positive) == 6 and len(t.negative) == 6
    assert [(e.prompt, e.system_prompt) for e in t.positive[:3]] == [("p1", "s1"), ("p1", "s2"), ("p2", "s1")]
    assert t.positive[2].source == "positive.json:4"  # "p2" sits on line 4 of the indented document


def test_json_without_system_prompts(tmp_path):
    d = make_trait(tmp_path, "c/t", {"positive.json": '{"prompts": ["p1", "p2"]}'})
    t = load_trait(d, root=tmp_path)
    assert [(e.prompt, e.system_prompt) for e in t.positive] == [("p1", None), ("p2", None)]
    assert not t.paired and t.negative == []


def test_txt_skips_blank_lines_and_keeps_line_numbers(tmp_path):
    d = make_trait(tmp_path, "c/t", {"positive.txt": "one\n\n  \ntwo\r\n", "negative.txt": "uno\ndos\n"})
    t = load_trait(d, root=tmp_path)
    assert [e.prompt for e in t.positive] == ["one", "two"]
    assert [e.source for e in t.positive] == ["positive.txt:1", "positive.txt:4"]


def test_single_polarity_and_unpaired_ood(tmp_path):
    d = make_trait(tmp_path, "c/t", {"positive.txt": "a\nb\n", "ood_positive.txt": "x\ny\nz\n",
                                     "ood_negative.jsonl": jsonl({"prompt": "w"})})
    t = load_trait(d, root=tmp_path)
    assert not t.paired
    assert (len(t.positive), len(t.ood_positive), len(t.ood_negative)) == (2, 3, 1)


def test_bom_is_accepted(tmp_path):
    d = make_trait(tmp_path, "c/t", {"positive.jsonl": b"\xef\xbb\xbf" + jsonl({"prompt": "hi"}).encode()})
    assert load_trait(d, root=tmp_path).positive[0].prompt == "hi"


def test_null_optional_key_is_absent_and_empty_system_prompt_is_kept(tmp_path):
    d = make_trait(tmp_path, "c/t", {"positive.jsonl": jsonl({"prompt": "a", "system_prompt": "", "response": None})})
    e = load_trait(d, root=tmp_path).positive[0]
    assert (e.system_prompt, e.response) == ("", None)


def test_cascade_global_then_category_then_trait(tmp_path):
    (tmp_path / "extraction.yaml").write_text("position: 'response[:]'\nmethod: probe\nval_split: 0.1\n")
    make_trait(tmp_path, "cat", {"extraction.yaml": "method: mean_diff\nval_split: 0.2\n"})
    d = make_trait(tmp_path, "cat/t", {**PAIR, "extraction.yaml": "val_split: 0.3\n"})
    other = make_trait(tmp_path, "cat/u", PAIR)
    assert load_trait(d, root=tmp_path).overrides == {"position": "response[:]", "method": "mean_diff", "val_split": 0.3}
    assert load_trait(other, root=tmp_path).overrides == {"position": "response[:]", "method": "mean_diff",
                                                          "val_split": 0.2}


def test_trait_outside_root_gets_global_and_own_overrides(tmp_path):
    root = tmp_path / "traits"
    root.mkdir()
    (root / "extraction.yaml").write_text("position: 'response[:]'\nmethod: probe\n")
    d = make_trait(tmp_path, "elsewhere/mytrait", {**PAIR, "extraction.yaml": "method: pca_diff\n"})
    t = load_trait(d, root=root)
    assert t.overrides == {"position": "response[:]", "method": "pca_diff"}
    assert (t.name, t.category) == ("mytrait", "elsewhere")


def test_fingerprint_tracks_content_not_layout(tmp_path):
    a = make_trait(tmp_path, "c/a", {"positive.txt": "p1\np2\n"})
    b = make_trait(tmp_path, "d/b", {"positive.jsonl": jsonl({"prompt": "p1"}, {"prompt": "p2"})})
    c = make_trait(tmp_path, "c/c", {"positive.jsonl": jsonl({"prompt": "p1"}, {"prompt": "p2", "response": "r"})})
    fa, fb, fc = (load_trait(x, root=tmp_path).fingerprint() for x in (a, b, c))
    assert fa == fb
    assert fa != fc
    # extraction.yaml settings are applied to the config (which job keys hold), not hashed with the examples:
    # one overridden on the command line must not invalidate anything
    (c / "extraction.yaml").write_text("position: 'prompt[-1]'\n")
    assert load_trait(c, root=tmp_path).fingerprint() == fc


def test_list_traits_and_resolve_by_name_and_path(tmp_path):
    make_trait(tmp_path, "starter/alpha", PAIR)
    make_trait(tmp_path, "starter/beta", {"positive.txt": "x\n"})
    make_trait(tmp_path, "other/gamma", PAIR)
    (tmp_path / "starter" / "not_a_trait").mkdir()
    assert list_traits(tmp_path) == ["other/gamma", "starter/alpha", "starter/beta"]
    assert resolve_trait_dir("starter/alpha", root=tmp_path) == (tmp_path / "starter/alpha").resolve()
    assert resolve_trait_dir(path=str(tmp_path / "other/gamma")) == (tmp_path / "other/gamma").resolve()


def test_missing_trait_lists_the_category(tmp_path):
    make_trait(tmp_path, "starter/alpha", PAIR)
    make_trait(tmp_path, "starter/beta", PAIR)
    make_trait(tmp_path, "other/gamma", PAIR)
    with pytest.raises(ConfigError) as e:
        resolve_trait_dir("starter/alpah", root=tmp_path)
    msg = str(e.value)
    assert e.value.key == "trait" and "starter/alpha, starter/beta" in msg and "gamma" not in msg


@pytest.mark.parametrize("name", ["../outside", "starter/../../x", "/etc", "~/x"])
def test_names_escaping_root_are_rejected(tmp_path, name):
    with pytest.raises(ConfigError) as e:
        resolve_trait_dir(name, root=tmp_path / "traits")
    assert e.value.key == "trait"


def test_symlink_out_of_root_is_rejected(tmp_path):
    root = tmp_path / "traits"
    outside = make_trait(tmp_path, "outside/t", PAIR)
    (root / "c").mkdir(parents=True)
    (root / "c" / "t").symlink_to(outside)
    with pytest.raises(ConfigError) as e:
        resolve_trait_dir("c/t", root=root)
    assert e.value.key == "trait" and "outside" in str(e.value)


def test_path_that_is_not_a_directory(tmp_path):
    with pytest.raises(ConfigError) as e:
        resolve_trait_dir(path=str(tmp_path / "nope"))
    assert e.value.key == "trait.path"


# ---------------------------------------------------------------- errors naming file:line


@pytest.mark.parametrize(
    ("line3", "needle"),
    [
        ('{"prompt": "x",}', "invalid JSON"),
        ('["prompt"]', "expected a JSON object per line, got array"),
        ('{"system_prompt": "s"}', 'missing key "prompt"'),
        ('{"prompt": 5}', '"prompt" must be a string, got number'),
        ('{"prompt": "x", "system_prompt": ["s"]}', '"system_prompt" must be a string, got array'),
        ('{"prompt": "x", "response": true}', '"response" must be a string, got boolean'),
        ('{"prompt": "x", "answer": "y"}', "unknown key 'answer'; allowed keys: prompt, system_prompt, response"),
        ('{"prompt": "   "}', '"prompt" is an empty string'),
        ('{"prompt": "x", "prompt": "y"}', 'duplicate key "prompt"'),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, line3, needle):
    text = jsonl({"prompt": "a"}, {"prompt": "b"}) + line3 + "\n"
    d = make_trait(tmp_path, "c/t", {"positive.jsonl": text})
    msg = data_error(d)
    assert "positive.jsonl:3: " in msg and needle in msg


def test_empty_file(tmp_path):
    d = make_trait(tmp_path, "c/t", {"positive.jsonl": jsonl({"prompt": "a"}), "negative.jsonl": "\n  \n"})
    msg = data_error(d)
    assert "negative.jsonl: empty file" in msg


def test_unequal_pair_counts_names_both_files_and_counts(tmp_path):
    d = make_trait(tmp_path, "c/t", {"positive.jsonl": jsonl({"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}),
                                     "negative.jsonl": jsonl({"prompt": "a"}, {"prompt": "b"})})
    msg = data_error(d)
    assert "positive.jsonl:3: " in msg
    assert "positive.jsonl has 3 examples" in msg and "negative.jsonl has 2" in msg


def test_two_formats_for_one_polarity(tmp_path):
    d = make_trait(tmp_path, "c/t", {"positive.jsonl": jsonl({"prompt": "a"}), "positive.json": '{"prompts": ["a"]}'})
    msg = data_error(d)
    assert "two formats for positive: positive.jsonl and positive.json" in msg


def test_non_utf8_names_line_and_byte_offset(tmp_path):
    content = jsonl({"prompt": "a"}).encode() + b'{"prompt": "caf\xe9"}\n'
    d = make_trait(tmp_path, "c/t", {"positive.jsonl": content})
    msg = data_error(d)
    offset = len(jsonl({"prompt": "a"}).encode()) + len(b'{"prompt": "caf')
    assert "positive.jsonl:2: not UTF-8" in msg and f"byte offset {offset}" in msg


def test_overlong_line(tmp_path):
    long = json.dumps({"prompt": "x" * (MAX_LINE_BYTES + 1)})
    d = make_trait(tmp_path, "c/t", {"positive.jsonl": jsonl({"prompt": "a"}) + long + "\n"})
    msg = data_error(d)
    assert "positive.jsonl:2: line longer than 1 MiB" in msg


def test_missing_trait_dir_and_missing_positive(tmp_path):
    assert "trait directory not found" in data_error(tmp_path / "c" / "nope", root=tmp_path)
    d = make_trait(tmp_path, "c/t", {"negative.jsonl": jsonl({"prompt": "a"})})
    msg = data_error(d)
    assert "no positive file" in msg and "positive.jsonl, positive.json, positive.txt" in msg


def test_category_dir_is_not_a_trait(tmp_path):
    make_trait(tmp_path, "c/t", PAIR)
    msg = data_error(tmp_path / "c", root=tmp_path)
    assert "no positive file" in msg and "looks like a category holding t" in msg


def test_misspelled_file_name_is_caught(tmp_path):
    d = make_trait(tmp_path, "c/t", {**PAIR, "ood_negativ.jsonl": jsonl({"prompt": "a"})})
    assert "ood_negativ.jsonl: unrecognised file name; did you mean ood_negative.jsonl?" in data_error(d)


@pytest.mark.parametrize(
    ("doc", "line", "needle"),
    [
        ('{\n  "prompts": [\n    "a",\n    7\n  ]\n}', 4, '"prompts[1]" must be a string, got number'),
        ('{\n  "prompts": ["a"],\n  "systems": ["s"]\n}', 3, "unknown key 'systems'; allowed keys: prompts"),
        ('{\n  "prompts": []\n}', 2, '"prompts" must be a non-empty array of strings, got an empty array'),
        ('{\n  "prompts": ["a"],\n  "system_prompts": "s"\n}', 3, '"system_prompts" must be a non-empty array'),
        ('{\n  "prompts": ["a"\n  "b"]\n}', 3, "invalid JSON"),
        ('{\n  "system_prompts": ["s"]\n}', 1, 'missing key "prompts"'),
        ('{\n  "prompts": ["a"],\n  "prompts": ["b"]\n}', 3, 'duplicate key "prompts"'),
    ],
)
def test_prompts_json_errors_name_line(tmp_path, doc, line, needle):
    d = make_trait(tmp_path, "c/t", {"positive.json": doc})
    msg = data_error(d)
    assert f"positive.json:{line}: " in msg and needle in msg


@pytest.mark.parametrize(
    ("doc", "line", "needle"),
    [
        ('{\n  "questions": ["q"],\n  "direction": "up"\n}', 3, "\"direction\" must be one of 'positive', 'negative'"),
        ('{\n  "questions": [],\n  "direction": "positive"\n}', 2, "non-empty array"),
        ('{\n  "questions": ["q", "q"],\n  "direction": "positive"\n}', 2, "duplicate question"),
        ('{\n  "questions": ["q"]\n}', 1, 'missing key "direction"'),
        ('{\n  "questions": ["q"],\n  "direction": "positive",\n  "extra": 1\n}', 4, "unknown key 'extra'"),
    ],
)
def test_steering_errors_name_line(tmp_path, doc, line, needle):
    d = make_trait(tmp_path, "c/t", {**PAIR, "steering.json": doc})
    msg = data_error(d)
    assert f"steering.json:{line}: " in msg and needle in msg


def test_bad_yaml_names_line(tmp_path):
    d = make_trait(tmp_path, "c/t", {**PAIR, "extraction.yaml": "position: ok\nmethod: : bad\nx: 1\n"})
    msg = data_error(d)
    assert "extraction.yaml:2: invalid YAML" in msg
    d2 = make_trait(tmp_path, "c/u", {**PAIR, "extraction.yaml": "- a\n- b\n"})
    assert "extraction.yaml:1: expected a mapping" in data_error(d2)


def test_load_examples_unknown_suffix(tmp_path):
    p = tmp_path / "positive.csv"
    p.write_text("a\n")
    with pytest.raises(DataError, match="unknown format '.csv'"):
        load_examples(p)


# ---------------------------------------------------------------- prompt sets


def test_prompt_set_object_and_plain_list(tmp_path):
    (tmp_path / "mix.json").write_text(json.dumps({"prompts": [
        {"id": "greet", "prompt": "hi", "system_prompt": "be brief"}, {"id": 7, "prompt": "yo"}, "bare"]}))
    (tmp_path / "plain.json").write_text(json.dumps(["one", "two"]))
    ps = load_prompt_set("mix", root=tmp_path)
    assert ps.name == "mix"
    assert [(i.id, i.prompt, i.system_prompt) for i in ps.items] == [
        ("greet", "hi", "be brief"), ("7", "yo", None), ("2", "bare", None)]
    plain = load_prompt_set(path=str(tmp_path / "plain.json"))
    assert [(i.id, i.prompt) for i in plain.items] == [("0", "one"), ("1", "two")]
    assert list_prompt_sets(tmp_path) == ["mix", "plain"]
    assert load_prompt_set("mix.json", root=tmp_path).fingerprint() == ps.fingerprint() != plain.fingerprint()


@pytest.mark.parametrize(
    ("doc", "line", "needle"),
    [
        ('{"prompts": [\n  {"id": 1, "prompt": "a"},\n  {"id": "1", "prompt": "b"}\n]}', 3, "duplicate id '1'"),
        ('{"prompts": [\n  {"id": 1, "prompt": "a"},\n  {"id": 2}\n]}', 3, 'missing key "prompt"'),
        ('{"prompts": [\n  {"id": 1, "prompt": "a"}\n  {"id": 2}\n]}', 3, "invalid JSON"),
        ('{"prompts": [\n  {"id": 1,\n   "prompt": ""}\n]}', 3, '"prompt" must be a non-empty string'),
        ('{"prompts": [\n  {"id": [1], "prompt": "a"}\n]}', 2, '"id" must be a non-empty string or an integer'),
        ('{"prompts": [\n  {"prompt": "a", "tags": []}\n]}', 2, "unknown key 'tags'; allowed keys: id, prompt"),
        ('{\n  "prompts": []\n}', 2, "no prompts"),
        ('{\n  "items": []\n}', 2, "unknown key 'items'"),
    ],
)
def test_prompt_set_errors_name_line(tmp_path, doc, line, needle):
    (tmp_path / "bad.json").write_text(doc)
    with pytest.raises(DataError) as e:
        load_prompt_set("bad", root=tmp_path)
    assert f"bad.json:{line}: " in str(e.value) and needle in str(e.value)


@pytest.mark.parametrize("name", ["../secret", "/etc/passwd", "a/../../b"])
def test_prompt_set_escape_rejected(tmp_path, name):
    with pytest.raises(ConfigError) as e:
        load_prompt_set(name, root=tmp_path)
    assert e.value.key == "prompt_set"


def test_prompt_set_missing_lists_available(tmp_path):
    (tmp_path / "starter.json").write_text('["a"]')
    with pytest.raises(ConfigError, match="available: starter"):
        load_prompt_set("startr", root=tmp_path)


def test_deeply_nested_json_is_a_data_error(tmp_path):
    d = make_trait(tmp_path, "c/t", {"positive.json": "[" * 100_000 + "]" * 100_000})
    assert "positive.json: JSON nested too deeply" in data_error(d)


def test_extraction_overrides_apply_with_stated_precedence(tmp_path):
    """command line > trait > category > global > config defaults, per key (generation per field)."""
    from traitlab.config.schema import ExtractConfig
    from traitlab.config.trait_overrides import apply_trait_overrides

    (tmp_path / "extraction.yaml").write_text("position: 'prompt[-1]'\nval_split: 0.15\n"
                                              "generation:\n  max_new_tokens: 7\n  top_p: 0.5\n")
    make_trait(tmp_path, "cat", {"extraction.yaml": "position: 'response[:3]'\ngeneration:\n  top_p: 0.9\n"})
    d = make_trait(tmp_path, "cat/t", {**PAIR, "extraction.yaml": "layers: '1-2'\nmethod: mean_diff\n"})
    trait = load_trait(d, root=tmp_path)
    cfg, report = apply_trait_overrides(ExtractConfig(), trait)
    assert (cfg.position.spec, cfg.layers, cfg.method.name, cfg.extraction.val_split) == (
        "response[:3]", "1-2", "mean_diff", 0.15)
    assert (cfg.extraction.generation.max_new_tokens, cfg.extraction.generation.top_p) == (7, 0.9)
    assert cfg.extraction.batch_size == ExtractConfig().extraction.batch_size  # nothing set it
    assert report["position.spec"]["source"] == f"{tmp_path / 'cat' / 'extraction.yaml'}:1"
    assert report["extraction.generation.top_p"]["source"] == f"{tmp_path / 'cat' / 'extraction.yaml'}:3"

    typed = ExtractConfig()
    typed.position.spec, typed.layers = "all[:]", "5"
    cfg, report = apply_trait_overrides(typed, trait, command_line={"position.spec", "layers"})
    assert (cfg.position.spec, cfg.layers, cfg.method.name) == ("all[:]", "5", "mean_diff")
    assert report["position.spec"] == {"value": "response[:3]", "source": report["position.spec"]["source"],
                                       "applied": False, "kept": "command line"}
    cfg, _ = apply_trait_overrides(ExtractConfig(), trait, command_line={"method"})  # a group choice
    assert cfg.method.name == ExtractConfig().method.name


def test_extraction_overrides_reject_unknown_keys_and_bad_types_with_file_and_line(tmp_path):
    from traitlab.config.schema import ExtractConfig
    from traitlab.config.trait_overrides import apply_trait_overrides, command_line_keys

    d = make_trait(tmp_path, "c/t", {**PAIR, "extraction.yaml": "method: probe\nvalsplit: 0.3\n"})
    with pytest.raises(DataError, match=r"extraction\.yaml:2: unknown key 'valsplit'"):
        load_trait(d, root=tmp_path)
    d = make_trait(tmp_path, "c/u", {**PAIR, "extraction.yaml": "generation:\n  max_tokens: 3\n"})
    with pytest.raises(DataError, match=r"extraction\.yaml:2: unknown key generation\.max_tokens"):
        load_trait(d, root=tmp_path)
    d = make_trait(tmp_path, "c/v", {**PAIR, "extraction.yaml": "seed: 1\nval_split: lots\n"})
    with pytest.raises(DataError, match=r"extraction\.yaml:2: extraction\.val_split"):
        apply_trait_overrides(ExtractConfig(), load_trait(d, root=tmp_path))
    assert command_line_keys(["position.spec='x'", "method=probe", "+extraction.val_split=0.3", "hydra.run.dir=o",
                              "~model.lora", "trait=starter/a"]) == {"position.spec", "method",
                                                                     "extraction.val_split", "trait"}


def test_python_callers_keep_the_values_they_changed(tmp_path):
    from traitlab.config.schema import ExtractConfig, PositionConfig
    from traitlab.config.trait_overrides import apply_trait_overrides

    d = make_trait(tmp_path, "c/t", {**PAIR, "extraction.yaml": "position: 'response[:3]'\nlayers: '2'\n"})
    cfg, report = apply_trait_overrides(ExtractConfig(position=PositionConfig(spec="prompt[-1]")),
                                        load_trait(d, root=tmp_path))
    assert (cfg.position.spec, cfg.layers) == ("prompt[-1]", "2")
    assert report["position.spec"]["applied"] is False


def test_multi_turn_messages_lines(tmp_path):
    conv = {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "How are you?"},
                         {"role": "assistant", "content": "Great, thanks."}]}
    d = make_trait(tmp_path, "c/t", {"positive.jsonl": jsonl(conv, {"messages": conv["messages"][1:4],
                                                                    "response": "Fine."})})
    a, b = load_trait(d, root=tmp_path).positive
    assert (a.prompt, a.system_prompt, a.response, a.history) == ("How are you?", "Be kind.", "Great, thanks.",
                                                                  (("Hi", "Hello!"),))
    assert (b.prompt, b.system_prompt, b.response, b.n_turns) == ("How are you?", None, "Fine.", 2)
    bad = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}
    d = make_trait(tmp_path, "c/u", {"positive.jsonl": jsonl({"prompt": "x"}, bad)})
    with pytest.raises(DataError, match=r"positive\.jsonl:2: messages\[1\] has role 'user'; expected 'assistant'"):
        load_trait(d, root=tmp_path)


def test_frames_the_data_cannot_have_fail_before_the_model(tmp_path):
    from traitlab.data.frames import check_position_frames

    rows = [{"prompt": "a", "system_prompt": "S", "response": "<think>hm</think> yes"}, {"prompt": "b", "response": "no"}]
    d = make_trait(tmp_path, "c/t", {"positive.jsonl": jsonl(*rows)})
    t = load_trait(d, root=tmp_path)
    with pytest.raises(DataError, match=r"positive\.jsonl:2: position 'system\[:\]' needs a non-empty system_prompt"):
        check_position_frames("system[:]", t, True)
    with pytest.raises(DataError, match=r"positive\.jsonl:2: position 'thinking' needs a given response with a think"):
        check_position_frames("thinking", t, True)
    with pytest.raises(DataError, match=r"positive\.jsonl:1: .*generated"):
        check_position_frames("thinking", t, False)
    with pytest.raises(DataError, match=r"positive\.jsonl:1: position 'turn\[1\]:response' needs turn 1, but this "
                                        r"example has 1 turn"):
        check_position_frames("turn[1]:response", t, True)
    check_position_frames("turn[-1]:response[:2]", t, True)
    check_position_frames("prompt[-1]", t, True)


def test_every_extraction_yaml_key_names_a_real_config_key():
    """OVERRIDE_KEYS is hand-written in data/: each target must exist in the extract config schema."""
    from omegaconf import OmegaConf

    from traitlab.config.schema import ExtractConfig
    from traitlab.data.traits import GENERATION_KEYS, OVERRIDE_KEYS

    conf = OmegaConf.structured(ExtractConfig())
    missing = [t for t in OVERRIDE_KEYS.values() if OmegaConf.select(conf, t, default="<absent>") == "<absent>"]
    missing += [k for k in GENERATION_KEYS
                if OmegaConf.select(conf, f"extraction.generation.{k}", default="<absent>") == "<absent>"]
    assert missing == []


def test_load_sources_several_sets_and_name_clashes(tmp_path):
    from traitlab.data.texts import load_sources

    sources = load_sources(["smoke", "starter"], None, 2)
    assert [(s.name, [it.id for it in s.items]) for s in sources] == [("smoke", ["s01", "s02"]),
                                                                      ("starter", ["p01", "p02"])]
    assert [s.name for s in load_sources("smoke", None, None)] == ["smoke"]
    other = tmp_path / "smoke.json"
    other.write_text('["hello"]')
    with pytest.raises(ConfigError, match="share the name"):
        load_sources(["smoke", str(other)], None, None)
    with pytest.raises(ConfigError, match="prompt_set"):
        load_sources([], None, None)


def test_calibration_source_prefers_the_neutral_dir_then_prompt_sets(tmp_path, monkeypatch):
    import shutil

    from traitlab.data.texts import load_calibration_source

    shipped = load_calibration_source("neutral")  # datasets/neutral/default.jsonl: prompts with plain answers
    assert shipped.name == "neutral:default" and len(shipped.items) == 64 and shipped.given_responses
    assert load_calibration_source("smoke").name == "smoke"  # any prompt set
    root = tmp_path / "datasets"  # without a neutral/ folder: the neutral prompt set, answered by the model
    shutil.copytree(Path(__file__).resolve().parents[2] / "datasets" / "inference", root / "inference")
    monkeypatch.setenv("TRAITLAB_DATASETS", str(root))
    neutral = load_calibration_source("neutral")
    assert neutral.name == "neutral" and len(neutral.items) >= 30 and not neutral.given_responses
    (root / "neutral").mkdir(parents=True)
    (root / "neutral" / "default.jsonl").write_text('{"prompt": "Hi", "response": "Hello."}\n'
                                                    '{"prompt": "Time?", "response": "Noon."}\n')
    monkeypatch.setenv("TRAITLAB_DATASETS", str(root))
    found = load_calibration_source("neutral", max_prompts=1)
    assert found.name == "neutral:default" and found.given_responses
    assert [(it.prompt, it.response) for it in found.items] == [("Hi", "Hello.")]
    with pytest.raises(ConfigError, match="inference.massive.set"):
        load_calibration_source("no_such_set")
