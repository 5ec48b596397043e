"""The model registry: `config.model.name` -> the `Model` class of module `esmjax.models.<name>`.

A model module registers its class with `@registry.register`; `get(name)` imports the module of
that name on first use (big_vision's `import_module(f"models.{name}")`), and `names()` imports
every module of the package, so adding a model is adding its file (and a config).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

from esmjax.common import hparams
from esmjax.models import model as model_lib

_MODELS: dict[str, type[model_lib.Model]] = {}


def register(cls: type[model_lib.Model]) -> type[model_lib.Model]:
  """Class decorator: registers a `Model` subclass under its `name`."""
  if not cls.name or not cls.name.isidentifier():
    raise TypeError(f"{cls.__qualname__}.name={cls.name!r}: a model needs a name (an identifier)")
  if cls.name in _MODELS and _MODELS[cls.name] is not cls:
    raise TypeError(
      f"model name {cls.name!r} is registered twice "
      f"({_MODELS[cls.name].__qualname__}, {cls.__qualname__})"
    )
  if not dataclasses.is_dataclass(cls.Hparams):
    raise TypeError(f"{cls.__qualname__}.Hparams must be a frozen dataclass")
  _MODELS[cls.name] = cls
  return cls


def _import_all() -> None:
  for info in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
    importlib.import_module(f"{__package__}.{info.name}")


def names() -> list[str]:
  """Every registered model name, the papers' models first."""
  _import_all()
  return sorted(_MODELS, key=lambda n: (_MODELS[n].order, n))


def get(name: str, key: str = "model.name") -> type[model_lib.Model]:
  """The model class registered as `name`; ValueError listing the registered names otherwise."""
  if isinstance(name, str) and name not in _MODELS and name.isidentifier():
    try:
      importlib.import_module(f"{__package__}.{name}")
    except ModuleNotFoundError as e:
      if e.name != f"{__package__}.{name}":
        raise
  if name not in _MODELS:
    raise ValueError(f"{key}={name!r} is not a model; allowed: {names()}")
  return _MODELS[name]


def build(section: Mapping[str, Any], schema) -> model_lib.Model:
  """The configured model (`config.model`) on a dataset schema."""
  return get(section["name"]).from_config(section, schema)


def hyperparameters() -> dict[str, dataclasses.Field]:
  """{key: declaration} of every registered model's hyperparameters (one flat `config.model`)."""
  return hparams.merge_declarations(((n, _MODELS[n].Hparams) for n in names()), "model")


def default_hyperparameters() -> dict[str, Any]:
  return {k: f.default for k, f in hyperparameters().items()}


def check_section(section: Mapping[str, Any]) -> None:
  """ValueError for a `config.model` key no model declares, or a value outside its range."""
  declared = hyperparameters()
  for key in section:
    if key in declared:
      hparams.check("model", key, section[key], declared[key])
    elif key not in model_lib.NETWORK_KEYS:
      raise ValueError(
        f"model.{key} is not a key of any model; keys: "
        f"{sorted([*model_lib.NETWORK_KEYS, *declared])}"
      )
  cls = get(section["name"])
  # Every model's keys share one flat section, so a key of another model is valid there; set to
  # anything but its default it would be silently ignored by this model, and is refused instead.
  own = {f.name for f in dataclasses.fields(cls.Hparams)}
  for key in sorted(declared):
    if key in section and key not in own and not _is_default(section[key], declared[key].default):
      raise ValueError(
        f"model.{key}={section[key]!r} is set, but model {cls.name!r} does not declare it; "
        f"{cls.name!r} keys: {sorted([*model_lib.NETWORK_KEYS, *own])}"
      )


def _is_default(value, default) -> bool:
  if isinstance(default, tuple) and isinstance(value, (list, tuple)):
    return tuple(value) == default
  return value == default
