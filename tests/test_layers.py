"""The library's layers (pyproject's import-linter contracts), and the commands a checkout runs."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=folder, capture_output=True, text=True, timeout=300)


def test_no_module_imports_from_a_layer_above_its_own():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_a_crossing_breaks_the_contract(tmp_path):
    for folder in ("agestimate", "cli", "training"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("weights", "static", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "agestimate" / "store" / "index.py", "a") as module:
        module.write("\nfrom agestimate.estimator import Estimator  # noqa: E402\nimport torch  # noqa: E402\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1
    assert "agestimate.store.index -> agestimate.estimator" in result.stdout
    assert "agestimate.store.index -> torch" in result.stdout


def test_the_commands_run_from_the_checkout_and_from_elsewhere(tmp_path):
    for folder in (ROOT, tmp_path):
        for module in ("agestimate", "agestimate.training.default_model"):
            result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=folder, capture_output=True, text=True,
                                    timeout=300)
            assert result.returncode == 0 and "usage" in result.stdout.lower(), (folder, module, result.stderr)
