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


@pytest.mark.parametrize("stage,parts", [
    ("vqvae", ["tokenizer=vqvae", "trainer=tokenizer"]),
    ("vqgan", ["tokenizer=vqgan", "trainer=tokenizer_gan"]),
    ("gen", ["tokenizer=gen", "trainer=tokenizer_gen"]),
    ("decoder", ["tokenizer=gen_dec", "trainer=tokenizer_dec", "decoder_only=true"]),
    ("decoder_post", ["tokenizer=gen_dec", "trainer=tokenizer_post", "decoder_only=true", "data.crop_size=null",
                      "data.batch_size=8"]),
    ("caption", ["tokenizer=gen_cap", "trainer=tokenizer_dec", "decoder_only=true", "data.crop_size=null",
                 "data.batch_size=8"]),
    ("caption_post", ["tokenizer=gen_cap", "trainer=tokenizer_post", "decoder_only=true", "data.crop_size=null",
                      "data.batch_size=8"]),
])
def test_a_tokenizer_stage_is_its_parts_in_one_switch(stage, parts):
    """`stage=NAME` (conf/stage/) composes the config its parts give, and what the command line sets still wins."""
    assert to_object(compose("train_tokenizer", [f"stage={stage}"])) == to_object(compose("train_tokenizer", parts))
    over = ["trainer.max_steps=7", "data.batch_size=4"]
    assert to_object(compose("train_tokenizer", [f"stage={stage}", *over])) == \
        to_object(compose("train_tokenizer", [*parts, *over]))
    with pytest.raises(ConfigError):
        compose("train_tokenizer", ["stage=no_such_stage"])
