"""Batch throughput on the CPU: GRID clips per minute through the preview preset, 1 and 2 workers.

Run with ``pytest tests/benchmarks/test_bench_batch.py --benchmark-enable``
(four clips per run; one when benchmarks are disabled, as a plain test).
``extra_info["clips_per_minute"]`` is the figure to report; the time includes
worker start-up (importing torch and the plugins in each spawned process).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from latentdub.toolkit.batch.run import run_batch


def _manifest(folder: Path, grid_clips: list[Path], n: int) -> Path:
    clips = [{"video": str(grid_clips[i]), "audio": str(grid_clips[(i + 1) % n]), "output": f"{grid_clips[i].stem}.mp4"} for i in range(n)]
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump({"preset": "preview", "roots": [str(grid_clips[0].parent)], "clips": clips}))
    return path


@pytest.mark.benchmark(group="batch")
@pytest.mark.parametrize("executor, workers", [("inline", 1), ("local", 2)])
def test_bench_batch_clips_per_minute(benchmark, tmp_path, grid_clips, executor, workers):
    n = 1 if benchmark.disabled else 4
    manifest = _manifest(tmp_path, grid_clips, n)
    summary = benchmark.pedantic(run_batch, args=(manifest,), kwargs=dict(workers=workers, executor=executor, log=lambda m: None), rounds=1, iterations=1)
    assert summary.ok and summary.count("done") == n
    benchmark.extra_info.update(clips=n, workers=workers, executor=executor, clips_per_minute=round(summary.clips_per_minute, 2))
