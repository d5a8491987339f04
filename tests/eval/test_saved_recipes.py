"""Generator files saved before the samplers had one registry still load and draw the same images.

The files and the images in tests/fixtures/saved_recipes/ were made by the code of that time
(`make_saved_recipes.py`; the commit is in expected.json): each method's recipe as it was written
then, the images `load_generator` drew from them.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sidbench.eval.generators import load_generator
from sidbench.samplers import RecipeError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "saved_recipes"
EXPECTED = torch.load(FIXTURES / "expected.pt")
FILES = json.loads((FIXTURES / "expected.json").read_text())["files"]


@pytest.mark.parametrize("name", FILES)
def test_an_old_generator_file_draws_the_images_it_drew(name: str) -> None:
    gen = load_generator(FIXTURES / f"{name}.safetensors")
    got = gen(EXPECTED["z"], EXPECTED["labels"])
    # The same arithmetic in the same order: equal up to the rounding of another CPU or torch build
    # (on the machine and torch that made the fixture, bit for bit: rtol=atol=0 passes there).
    torch.testing.assert_close(got, EXPECTED["images"][name], rtol=1e-5, atol=1e-6)


def test_old_recipes_read_in_todays_form() -> None:
    one = load_generator(FIXTURES / "sid.safetensors")
    assert one.recipe == {"sampler": "one_step", "sigmas": [2.5], "nfe": 1} and one.method == "sid"
    assert "one_step (sigma 2.5), 1 NFE" in one.describe()
    oldest = load_generator(FIXTURES / "sigma-init.safetensors")  # no sampler name at all
    assert oldest.recipe == {"sampler": "one_step", "sigmas": [2.5], "nfe": 1}
    multi = load_generator(FIXTURES / "consistency.safetensors")
    assert multi.recipe["sigma_min"] == 0.002 and multi.nfe == 2
    assert "consistency (sigmas [80.0, 0.8], sigma_min 0.002), 2 NFE" in multi.describe()


def test_a_recipe_naming_an_unknown_sampler_is_one_line(tmp_path: Path) -> None:
    from sidbench.teachers.load import load_native_teacher, save_native_teacher
    from sidbench.teachers.networks import build_edm_network

    constructor, state, info = load_native_teacher(FIXTURES / "sid.safetensors", kind="generator")
    net = build_edm_network(constructor)
    net.load_state_dict(state)
    path = save_native_teacher(net, constructor, tmp_path / "g.safetensors",
                               {**info, "sampling": {"sampler": "ddpm", "sigmas": [80.0], "nfe": 1}})
    with pytest.raises(RecipeError, match="names the sampler 'ddpm', which is not registered.*known: consistency"):
        load_generator(path)
