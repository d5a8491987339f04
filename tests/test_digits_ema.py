"""benchmarks/digits_ema.py: its averages are fed exactly as the trainer feeds its own."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import digits_ema  # noqa: E402


def test_the_average_of_the_presets_rampup_equals_the_trainers(tmp_path: Path, run_env: Path) -> None:
    out = tmp_path / "ema.jsonl"
    assert digits_ema.main(["--kimg", "0.512", "--every", "0.256", "--rampups", "0.15", "0.3", "--out", str(out),
                            "eval.num_samples=256", "trainer.ema_rampup=0.15"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["kimg"] for line in lines] == [0.256, 0.512]
    for line in lines:  # the run's ramp-up is 0.15: the same average, the same score, bit for bit
        assert line["rampup_0.15"] == line["trainer_ema"]
    # the first update copies the generator whatever the ramp-up; the second one weighs it by it
    assert lines[0]["rampup_0.3"] == lines[0]["rampup_0.15"]
    assert lines[1]["rampup_0.3"] != lines[1]["rampup_0.15"]
