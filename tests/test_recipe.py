"""Recipes: the embedded default, the paper recipes, overrides and validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from vtpdeploy.errors import RecipeError
from vtpdeploy.train.recipe import Recipe, dump_recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_yaml_is_the_embedded_default():
    assert load_recipe(ROOT / "recipes" / "quickstart.yaml") == load_recipe(None) == Recipe()


def test_quickstart_uses_digits_small_custom_vit_and_40_percent():
    r = load_recipe(None)
    assert r.data.kind == "digits" and r.prune.rate == 0.4
    assert r.model.kwargs["img_size"] == 32 and r.model.kwargs["num_classes"] == 10


@pytest.mark.parametrize("name,rate,classes", [("deit_base_vtp20_in1k", 0.2, 1000), ("deit_base_vtp40_in1k", 0.4, 1000),
                                               ("deit_base_vtp40_in100", 0.4, 100)])
def test_paper_recipes_carry_the_paper_hyper_parameters(name, rate, classes):
    r = load_recipe(ROOT / "recipes" / f"{name}.yaml")
    assert r.model.name == "deit_base_patch16_224" and r.model.kwargs["num_classes"] == classes
    assert r.prune.rate == rate and r.prune.scope == "global" and r.prune.importance == "gate"
    assert r.sparsify.lam == 1e-4 and r.sparsify.lr == 6.25e-6 and r.sparsify.epochs == 100
    assert r.finetune.epochs == 100 and r.finetune.distill == "none"
    assert r.data.kind == "imagefolder" and r.data.auto_augment and r.data.mixup == 0.8 and r.data.cutmix == 1.0


def test_set_merges_into_nested_defaults():
    r = load_recipe(None, ["model.kwargs.depth=6", "prune.scope=per_kind", "export.enabled=true"])
    assert r.model.kwargs["depth"] == 6 and r.model.kwargs["embed_dim"] == Recipe().model.kwargs["embed_dim"]
    assert r.prune.scope == "per_kind" and r.export.enabled is True


def test_dump_then_load_round_trips(tmp_path):
    r = load_recipe(None, ["prune.rate=0.25", "finetune.distill=soft"])
    (tmp_path / "r.yaml").write_text(dump_recipe(r))
    assert load_recipe(tmp_path / "r.yaml") == r


@pytest.mark.parametrize("overrides,message", [
    (["prune.rate=0"], "prune.rate"),
    (["prune.rate=1"], "prune.rate"),
    (["prune.scope=everywhere"], "prune.scope"),
    (["export.opset=99"], "export.opset"),
    (["export.bogus=1"], "unknown key 'export.bogus'"),
    (["model.kwargs"], "expected key.path=value"),
    (["data.kind=imagenet"], "data.kind"),
])
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_recipe(None, overrides)
    assert "\n" not in str(info.value)


def test_yaml_unknown_nested_key_reports_path(tmp_path):
    (tmp_path / "r.yaml").write_text("sparsify:\n  lam: 1.0e-4\n  lamda: 2\n")
    with pytest.raises(RecipeError, match="unknown key 'sparsify.lamda'"):
        load_recipe(tmp_path / "r.yaml")
