"""The layer DSL: every term kind, combinations, and every error path."""

from __future__ import annotations

import pytest

from traitlab.core.layers import LayerSpecError, parse_layers
from traitlab.errors import TraitlabError


@pytest.mark.parametrize(
    ("spec", "n", "best", "expected"),
    [
        ("all", 4, None, [0, 1, 2, 3]),
        ("12", 30, None, [12]),
        ("-1", 30, None, [29]),
        ("0", 1, None, [0]),
        ("3,5,7", 30, None, [3, 5, 7]),
        ("7, 3 ,5,3", 30, None, [3, 5, 7]),
        ("5-10", 30, None, [5, 6, 7, 8, 9, 10]),
        ("5-5", 30, None, [5]),
        ("-3--1", 30, None, [27, 28, 29]),
        ("30%-60%", 30, None, list(range(9, 19))),
        ("30%-60%", 4, None, [1, 2]),
        ("0%-100%", 4, None, [0, 1, 2, 3]),
        ("50%", 30, None, [15]),
        ("51%-52%", 4, None, [2]),  # a narrow fraction still selects one layer
        ("12.5%-25%", 8, None, [1, 2]),
        ("best", 30, 12, [12]),
        ("best+5", 30, 12, [17]),
        ("best-2", 30, 12, [10]),
        ("best,best+5", 30, 12, [12, 17]),
        ("1,best,20-21,90%-100%", 30, 12, [1, 12, 20, 21, 27, 28, 29]),
        ("ALL", 3, None, [0, 1, 2]),
        (12, 30, None, [12]),
        (-2, 30, None, [28]),
        ([5, 3, 5], 30, None, [3, 5]),
        ((0, -1), 4, None, [0, 3]),
        (["best", "best+1", 2], 30, 5, [2, 5, 6]),
    ],
)
def test_parse_layers(spec, n, best, expected):
    assert parse_layers(spec, n, best=best) == expected


def test_omegaconf_listconfig_is_accepted():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"layers": [4, 2, "best"]})
    assert parse_layers(cfg.layers, 10, best=7) == [2, 4, 7]


@pytest.mark.parametrize(
    ("spec", "n", "best", "fragment"),
    [
        ("30", 30, None, "layer 30 is out of range"),
        ("-31", 30, None, "layer -31 is out of range"),
        ("5-40", 30, None, "layer 40 is out of range"),
        ("10-5", 30, None, "range '10-5' runs backwards (10 > 5)"),
        ("60%-30%", 30, None, "runs backwards"),
        ("50%-150%", 30, None, "above 100%"),
        ("foo", 30, None, "cannot parse 'foo'"),
        ("3,,5", 30, None, "empty term"),
        ("", 30, None, "empty term"),
        ([], 30, None, "empty term"),
        ("best", 30, None, "'best' needs a best layer"),
        ("best+5", 30, None, "'best' needs a best layer"),
        ("best+5", 30, 27, "'best+5' is layer 32 (best = 27), out of range"),
        ("best-3", 30, 1, "'best-3' is layer -2 (best = 1), out of range"),
        ("best*2", 30, 3, "cannot parse 'best*2'"),
        ("5-", 30, None, "cannot parse '5-'"),
        ("1.5", 30, None, "cannot parse '1.5'"),
        (True, 30, None, "not a bool"),
        ([1, 2.5], 30, None, "list item 2.5 is not an int"),
        (3.0, 30, None, "expected all"),
    ],
)
def test_errors_quote_spec_and_range(spec, n, best, fragment):
    with pytest.raises(LayerSpecError) as info:
        parse_layers(spec, n, best=best)
    msg = str(info.value)
    assert fragment in msg
    assert msg.startswith(f"layers {spec!r}: ")
    assert msg.endswith(f"valid layers are 0..{n - 1} (n_layers {n})")
    assert "\n" not in msg
    assert isinstance(info.value, TraitlabError) and isinstance(info.value, ValueError)


def test_bad_n_layers():
    with pytest.raises(LayerSpecError, match="n_layers must be a positive int, got 0"):
        parse_layers("all", 0)


@pytest.mark.parametrize(("spec", "best", "expected"), [
    ("best-2:best+2", 12, [10, 11, 12, 13, 14]),
    ("best:best+1", 12, [12, 13]),
    ("best-2:best+2", 1, [0, 1, 2, 3]),        # a window around best is clipped to the model's layers
    ("best-1:best+3", 28, [27, 28, 29]),
    ("2,best-1:best+1", 20, [2, 19, 20, 21]),
])
def test_window_around_best(spec, best, expected):
    assert parse_layers(spec, 30, best=best) == expected


def test_window_around_best_errors():
    with pytest.raises(LayerSpecError, match="'best' needs a best layer"):
        parse_layers("best-2:best+2", 30, best=None)
    with pytest.raises(LayerSpecError, match="runs backwards"):
        parse_layers("best+2:best-2", 30, best=10)


def test_dsl_overrides_parse_in_hydra_as_typed_in_bash() -> None:
    """What bash passes after stripping quotes reaches Hydra's real override parser as the DSL value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from traitlab.cli import quote_dsl_overrides

    parser = OverridesParser.create()

    def values(args: list[str]) -> dict[str, list[str]]:
        out = {}
        for o in parser.parse_overrides([a for a in quote_dsl_overrides(args) if a not in ("-m", "--multirun")]):
            out[o.key_or_group] = [getattr(v, "text", v) for v in o.sweep_iterator()] if o.is_sweep_override() else [o.value()]
        return out

    single = values(["position.spec=response[:5]", "layers=best,best+5", "inference.position=prompt[-3:]",
                     "layers=30%-60%", "method=probe"])
    assert single == {"position.spec": ["response[:5]"], "layers": ["30%-60%"], "inference.position": ["prompt[-3:]"],
                      "method": ["probe"]}
    assert values(["layers=best,best+5"]) == {"layers": ["best,best+5"]}
    assert values(["layers=best-2:best+2"]) == {"layers": ["best-2:best+2"]}  # a window around best
    multi = values(["-m", "position.spec=response[:5],prompt[-1]", "layers=[10,12]", "method=probe,mean_diff"])
    assert multi == {"position.spec": ["response[:5]", "prompt[-1]"], "layers": ["10,12"],
                     "method": ["probe", "mean_diff"]}
    assert values(["-m", "layers=10-20,30%-60%"]) == {"layers": ["10-20", "30%-60%"]}
    # the use stages' DSL keys: generate / chat take `position=` as a DSL string and `monitor_layers=` as layers
    use = values(["monitor_layers=best,best+2", "position=response[:5]", "layers=[10,12]"])
    assert use == {"monitor_layers": ["best,best+2"], "position": ["response[:5]"], "layers": ["10,12"]}
    assert values(["-m", "monitor_layers=10,best", "position=response[:5],prompt[-1]"]) == {
        "monitor_layers": ["10", "best"], "position": ["response[:5]", "prompt[-1]"]}
    assert values(["position=prompt_last"]) == {"position": ["prompt_last"]}  # a group choice (extract) stays one
    # already quoted (a list argv from Python, or quotes a person escaped), null and sweep functions pass as given
    assert quote_dsl_overrides(["layers='10,12'", "layers=null", "-m", "layers=range(1,3)"]) == [
        "layers='10,12'", "layers=null", "-m", "layers=range(1,3)"]
