"""benchmarks/run.py --markdown-only: the generated section is replaced, the rest of the file kept."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import generated_section  # noqa: E402

MACHINE = {"cpu": "Test CPU", "nproc": 2, "memory_gb": 1.0, "python": "3.11", "onnxruntime": "1.0",
           "providers": ["CPUExecutionProvider"]}


def entry(result):
    return {"date": "2026-01-01", "machine": MACHINE, "command": "python benchmarks/run.py", "seconds": 1.0,
            "result": result}


def test_rewrite_replaces_only_the_generated_section(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nintro\n\n## Written by hand\n\nkept\n")
    heads = {"embedding": {"input_dim": 512, "vectors_per_s_median": 150_000, "min": 140_000, "max": 160_000}}
    generated_section.rewrite(path, {"heads": entry(heads)})
    first = path.read_text()
    assert first.startswith("# Benchmarks\n\nintro\n") and first.endswith("## Written by hand\n\nkept\n")
    assert "150,000 (140,000-160,000)" in first and "goal 200,000/s: **missed by 25%**" in first

    heads["embedding"]["vectors_per_s_median"] = 250_000
    generated_section.rewrite(path, {"heads": entry(heads)})
    second = path.read_text()
    assert second.count(generated_section.BEGIN) == 1 and "150,000 (" not in second
    assert "goal 200,000/s: met" in second and second.endswith("## Written by hand\n\nkept\n")
