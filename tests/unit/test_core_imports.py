"""traitlab.core must stay importable without Hydra, MLflow, Optuna or transformers."""

import subprocess
import sys


def test_core_imports_without_frameworks():
    code = (
        "import sys, traitlab.core\n"
        "bad = [m for m in ('hydra', 'mlflow', 'optuna', 'transformers') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
