"""Validation of the model and embedding sections: every hyperparameter is checked against the range
its model / optimizer declares, and an error names the key, the value and the allowed values."""

import dataclasses

import pytest
import tiny

from esmjax.common import hparams
from esmjax.config import defaults as config_lib
from esmjax.embedding import optimizers as opt_lib
from esmjax.models import registry


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("model.aman_rate", 0.0, "model.aman_rate=0.0 is not allowed: in (0, 1]"),
    ("model.aman_rate", 1.5, "model.aman_rate=1.5 is not allowed: in (0, 1]"),
    ("model.oversample_k", 0.5, "model.oversample_k=0.5 is not allowed: in [1, inf)"),
    ("model.unbias_min_pctr", 0.0, "model.unbias_min_pctr=0.0 is not allowed: in (0, 1]"),
    (
      "model.loss_weights",
      (0.0, 0.0, 0.0),
      "model.loss_weights=(0.0, 0.0, 0.0) is not allowed: 3 numbers, each in [0, inf), not all 0",
    ),
    ("model.loss_weights", (1.0, -1.0, 1.0), "model.loss_weights=(1.0, -1.0, 1.0) is not allowed"),
    ("model.loss_weights", (1.0, 1.0), "model.loss_weights=(1.0, 1.0) is not allowed: 3 numbers"),
    (
      "model.daction_label",
      "basket",
      "model.daction_label='basket' is not allowed: one of ['daction', 'cart', 'wish']",
    ),
    ("model.embed_dim", 0, "model.embed_dim=0 is not allowed: an int > 0"),
    ("model.dropout", 1.0, "model.dropout=1.0 is not allowed: in [0, 1)"),
    ("embedding.learning_rate", 0.0, "embedding.learning_rate=0.0 is not allowed: in (0, inf)"),
    ("embedding.eps", 0.0, "embedding.eps=0.0 is not allowed: in (0, inf)"),
    ("embedding.beta1", 1.0, "embedding.beta1=1.0 is not allowed: in [0, 1)"),
    ("embedding.beta2", -0.1, "embedding.beta2=-0.1 is not allowed: in [0, 1)"),
    ("embedding.l1", -1.0, "embedding.l1=-1.0 is not allowed: in [0, inf)"),
    ("embedding.ftrl_beta", -1.0, "embedding.ftrl_beta=-1.0 is not allowed: in [0, inf)"),
    ("embedding.initial_accumulator", -0.1, "embedding.initial_accumulator=-0.1 is not allowed"),
    ("embedding.init_std", -0.01, "embedding.init_std=-0.01 is not allowed: a number >= 0"),
    ("embedding.learning_rate", float("nan"), "embedding.learning_rate=nan is not allowed"),
  ],
)
def test_out_of_range_value_names_key_value_and_range(key, value, message):
  cfg = tiny.tiny_config("esmm")
  config_lib.set_path(cfg, key, value)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(cfg)
  assert message in str(e.value)


def test_defaults_and_boundaries_are_valid():
  # Each boundary on a model that declares the key (another model's key is refused).
  for model, key, value in (
    ("aman", "aman_rate", 1.0),  # (0, 1]: 1 is allowed
    ("oversampling", "oversample_k", 1),  # an int where a float is declared
  ):
    cfg = tiny.tiny_config(model)
    config_lib.set_path(cfg, f"model.{key}", value)
    config_lib.validate(cfg)
  cfg = tiny.tiny_config("esm2")
  cfg.model.loss_weights = (0.0, 0.0, 2.0)  # not all 0
  cfg.embedding.init_std = 0.0
  cfg.embedding.beta1 = 0.0
  config_lib.validate(cfg)
  c = registry.build(cfg.model, tiny.tiny_schema())
  assert c.hp.loss_weights == (0.0, 0.0, 2.0) and isinstance(c.hp.loss_weights[0], float)


def test_unknown_keys_are_named():
  cfg = tiny.tiny_config("esmm")
  cfg.model.aman_rat = 0.2  # a typo in a config file (the CLI refuses unknown keys itself)
  with pytest.raises(
    config_lib.ConfigError, match=r"model.aman_rat is not a key of any model; keys: .*aman_rate"
  ):
    config_lib.validate(cfg)
  cfg = tiny.tiny_config("esmm")
  cfg.embedding.ftrl_betta = 1.0
  with pytest.raises(
    config_lib.ConfigError, match=r"embedding.ftrl_betta is not a key .*ftrl_beta"
  ):
    config_lib.validate(cfg)


def test_every_declared_hyperparameter_is_a_default_config_key():
  cfg = config_lib.default_config()
  for key, f in registry.hyperparameters().items():
    assert cfg.model[key] == f.default, key
  for key, f in opt_lib.hyperparameters().items():
    assert cfg.embedding[key] == f.default, key
  assert cfg.embedding.ftrl_beta == 1.0


def test_a_new_hyperparameter_is_checked_where_it_is_declared():
  @dataclasses.dataclass(frozen=True)
  class Hparams:
    temperature: float = hparams.field(1.0, "softmax temperature", gt=0)

  assert hparams.from_section(Hparams, {"temperature": 2, "other": "x"}, "model") == Hparams(2.0)
  with pytest.raises(ValueError, match=r"model.temperature=0 is not allowed: in \(0, inf\)"):
    hparams.from_section(Hparams, {"temperature": 0}, "model")
  with pytest.raises(ValueError, match="outside its own range"):
    hparams.field(-1.0, "a default outside its range", ge=0)


def test_two_models_may_not_declare_one_key_differently():
  @dataclasses.dataclass(frozen=True)
  class A:
    rate: float = hparams.field(0.1, "a", gt=0)

  @dataclasses.dataclass(frozen=True)
  class B:
    rate: float = hparams.field(0.2, "b", gt=0)

  assert set(hparams.merge_declarations([("a", A), ("a2", A)], "model")) == {"rate"}
  with pytest.raises(TypeError, match="'rate' is declared differently by 'a' and 'b'"):
    hparams.merge_declarations([("a", A), ("b", B)], "model")
