"""The README's example sampler runs as written: registered by its decorator, followed by a recipe
that names it (by hand: the network's calls), and found through $SIDBENCH_PLUGINS by `sidbench list`
and by `sidbench fid` on a saved generator whose recipe names it."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def example_code() -> str:
    section = README.read_text().split("## Adding a sampler", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the README's 'Adding a sampler' section should hold exactly one python block"
    return blocks[0]


def test_the_example_sampler_follows_its_recipe() -> None:
    from sidbench.diffusion import per_sample_noise, sample
    from sidbench.samplers import SAMPLERS
    from sidbench.teachers.networks import build_edm_network
    from sidbench.testing.tiny import TINY_CONSTRUCTOR

    namespace: dict = {"__name__": "readme_sampler"}
    if "renoise" not in SAMPLERS:
        exec(compile(example_code(), "README.md", "exec"), namespace)
    torch.manual_seed(0)
    net = build_edm_network(TINY_CONSTRUCTOR).eval()
    calls: list[float] = []
    net.register_forward_pre_hook(lambda m, a: calls.append(float(a[1][0])))
    z = torch.randn(3, 1, 8, 8)
    recipe = {"sampler": "renoise", "sigmas": [2.5, 1.0], "nfe": 2}
    x = sample(net, z, None, recipe)
    assert calls == [2.5, 1.0]  # 2 NFE, at the recipe's sigmas
    with torch.no_grad():  # by hand
        x1 = net(2.5 * z, torch.full((3,), 2.5))
        want = net(x1 + 1.0 * per_sample_noise(z, 1)[0], torch.full((3,), 1.0))
    torch.testing.assert_close(x, want, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([sample(net, z[:1], None, recipe), sample(net, z[1:], None, recipe)]), x)


@pytest.mark.slow
def test_a_generator_whose_recipe_names_the_example_is_listed_and_scored(tmp_path: Path) -> None:
    from sidbench.teachers.load import save_native_teacher
    from sidbench.teachers.networks import build_edm_network
    from sidbench.testing.tiny import TINY_CONSTRUCTOR

    (tmp_path / "my_sampler.py").write_text(example_code())
    torch.manual_seed(0)
    save_native_teacher(build_edm_network(TINY_CONSTRUCTOR), TINY_CONSTRUCTOR, tmp_path / "g.safetensors",
                        {"method": "", "kimg": 0, "sampling": {"sampler": "renoise", "sigmas": [2.5, 1.0], "nfe": 2}})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "SIDBENCH_PLUGINS": "my_sampler", "SIDBENCH_CACHE": str(tmp_path / "cache")}
    listed = subprocess.run([sys.executable, "-m", "sidbench.cli", "list"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert "renoise" in listed.stdout and "re-noised to each" in listed.stdout
    fid = subprocess.run([sys.executable, "-m", "sidbench.cli", "fid", "g.safetensors", "dataset=digits", "--num", "64",
                          "--device", "cpu"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert fid.returncode == 0, fid.stderr
    assert "renoise (sigmas [2.5, 1.0]), 2 NFE" in fid.stderr
