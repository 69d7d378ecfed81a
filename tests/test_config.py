"""Configs: presets validate against their schemas; composition gives typed objects; errors are ConfigError."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import arlm.conf as conf
from arlm.config import GROUPS, EvalImagesConfig, compose, to_object
from arlm.errors import ConfigError
from arlm.judge import JudgeConfig

CONF = Path(conf.__file__).parent


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_group_has_a_tiny_preset_that_fits_its_schema(group):
    presets = sorted((CONF / group).glob("*.yaml"))
    assert "tiny" in [p.stem for p in presets]
    names = [p.stem for p in presets]

    def resolved(name: str):
        """A preset merged onto its base: the schema, or another preset of the group that it extends."""
        raw = OmegaConf.load(CONF / group / f"{name}.yaml")
        base, self_ = list(raw.pop("defaults"))
        assert self_ == "_self_" and (base == f"{group}_schema" or base in names)
        parent = OmegaConf.structured(GROUPS[group]) if base == f"{group}_schema" else resolved(base)
        return OmegaConf.merge(parent, raw)  # raises on unknown keys / types

    for name in names:
        assert isinstance(OmegaConf.to_object(resolved(name)), GROUPS[group])


def test_compose_gives_typed_objects_with_overrides():
    cfg = to_object(compose("eval_images", ["judge.workers=1", "limit=7"]))
    assert isinstance(cfg, EvalImagesConfig) and isinstance(cfg.judge, JudgeConfig)
    assert cfg.judge.workers == 1 and cfg.limit == 7 and cfg.details is None
    assert to_object(compose("eval_images")) == EvalImagesConfig()  # the dataclasses hold the defaults


@pytest.mark.parametrize("overrides", [["nope=1"], ["judge.nope=1"], ["judge.workers=x"], ["data=tiny"],
                                       ["limit=[1,2]"], ["judge=nope"]])
def test_bad_overrides_raise_config_error(overrides):
    with pytest.raises(ConfigError) as e:
        compose("eval_images", overrides)
    assert "\n" not in str(e.value)


def test_unknown_root():
    with pytest.raises(ConfigError):
        compose("nope")
