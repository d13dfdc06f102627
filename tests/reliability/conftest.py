"""Fixtures of the reliability suite: a store with an extracted vector, and the local judge server."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from helpers import ROOT, Sandbox, launch, tiny_trait, with_fast

# The real llama.cpp judge server and its stop/restart controller live in tests/integration/conftest.py;
# load that module once and expose its fixtures here too (tests/ is not a package).
_spec = importlib.util.spec_from_file_location("_integration_conftest", ROOT / "tests" / "integration" / "conftest.py")
_integration = importlib.util.module_from_spec(_spec)
assert _spec.loader is not None
_spec.loader.exec_module(_integration)
llama_server_process = _integration.llama_server_process
llama_server = _integration.llama_server


@pytest.fixture(scope="session")
def extracted(tmp_path_factory) -> tuple[Sandbox, Path]:
    """A store holding an extracted layer-10 vector (mean_diff) of a tiny trait with given responses.
    Tests clone the store (Sandbox.clone_store) so their steering runs do not see each other."""
    root = tmp_path_factory.mktemp("extracted")
    box = Sandbox(root).seed_store()
    trait = tiny_trait(root / "trait")
    proc = launch("extract", with_fast([f"trait.path={trait}", "layers=10"], root / "hydra"), box.env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return box, trait
