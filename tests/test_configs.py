"""The shipped configs: arguments after the colon (`aman.py:rate=0.2,world=paper`), the papers'
schedule set in one place, and a key of another model refused."""

import pathlib
import re

import pytest
import tiny

from esmjax.config import defaults as config_lib
from esmjax.config import presets

CONFIGS = sorted(
  str(p.relative_to(tiny.REPO))
  for p in (tiny.REPO / "configs").rglob("*.py")
  if p.parent.name != "data"
)


def test_parse_arg_casts_to_the_defaults_types_and_a_bare_value_sets_the_first_key():
  a = presets.parse_arg("rate=0.2,world=paper", world="default", rate=0.1, on=False, n=1)
  assert a.to_dict() == {"world": "paper", "rate": 0.2, "on": False, "n": 1}
  assert presets.parse_arg("paper", world="default", rate=0.1).to_dict() == {
    "world": "paper",
    "rate": 0.1,
  }
  assert presets.parse_arg("", world="default").world == "default"
  assert presets.parse_arg("on=true,n=3", on=False, n=1).to_dict() == {"on": True, "n": 3}


@pytest.mark.parametrize(
  "arg, message",
  [
    ("rat=0.2", "config argument 'rat' in 'rat=0.2': unknown; allowed: world, rate"),
    ("rate=high", "config argument rate='high': not a float"),
  ],
)
def test_parse_arg_names_a_bad_argument(arg, message):
  with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
    presets.parse_arg(arg, world="default", rate=0.1)


@pytest.mark.parametrize(
  "path, arg, key, value",
  [
    ("configs/baselines/aman.py", "", "aman_rate", 0.1),
    ("configs/baselines/aman.py", "rate=0.5", "aman_rate", 0.5),
    ("configs/baselines/aman.py", "rate=1", "aman_rate", 1.0),
    ("configs/baselines/oversampling.py", "", "oversample_k", 5.0),
    ("configs/baselines/oversampling.py", "k=10,world=paper", "oversample_k", 10.0),
  ],
)
def test_a_baseline_takes_its_number_as_an_argument(path, arg, key, value):
  c = config_lib.validate(tiny.repo_config(f"{path}:{arg}" if arg else path))
  assert c.model[key] == value
  world = "paper" if "world=paper" in arg else "default"
  assert c.data.synthetic.to_dict() == config_lib.default_config(world).data.synthetic.to_dict()


@pytest.mark.parametrize("path", CONFIGS)
def test_every_shipped_config_trains_with_the_one_schedule_and_takes_a_world(path):
  text = (tiny.REPO / path).read_text()
  assert "batch_size" not in text and "num_epochs" not in text  # set in presets.SCHEDULE only
  for world in ("default", "paper"):
    c = config_lib.validate(tiny.repo_config(f"{path}:world={world}"))
    assert {k: config_lib.get_path(c, k) for k in presets.SCHEDULE} == presets.SCHEDULE
    assert c.data.synthetic.to_dict() == config_lib.default_config(world).data.synthetic.to_dict()


def test_a_key_of_another_model_is_refused_naming_the_model_and_its_keys():
  c = tiny.tiny_config("esmm")
  c.model.oversample_k = 3.0
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c)
  assert str(e.value) == (
    "model.oversample_k=3.0 is set, but model 'esmm' does not declare it; 'esmm' keys: "
    "['activation', 'dense_mode', 'dropout', 'dtype', 'embed_dim', 'fuse_towers', 'hidden', "
    "'name']"
  )
  c.model.oversample_k = 5.0  # its default: what every config carries, not a setting
  config_lib.validate(c)
  c.model.name = "oversampling"
  c.model.oversample_k = 3.0
  assert config_lib.validate(c).model.oversample_k == 3.0


def test_configs_are_found():
  assert "configs/esmm.py" in CONFIGS and "configs/baselines/aman.py" in CONFIGS
  assert not any(re.search(r"_\d+$", pathlib.Path(p).stem) for p in CONFIGS)  # no copy per number


def test_a_saved_config_without_a_compatibility_key_reads_as_before_the_key_existed():
  from esmjax.config import compat
  from esmjax.models import model as model_lib

  c = tiny.tiny_config("esmm")
  for key, value in compat.ABSENT_MEANS.items():
    section, _, name = key.rpartition(".")
    assert compat.get(c, key) == config_lib.get_path(c, key)  # present: its own value
    del config_lib.get_path(c, section)[name]
    assert compat.get(c, key) == value
  config_lib.validate(c)  # a config saved before all three keys existed
  network = model_lib.Network.from_config(c.model, tiny.tiny_schema())
  assert network.fuse_towers is compat.ABSENT_MEANS["model.fuse_towers"]
  assert network.dtype == model_lib.DTYPES[compat.ABSENT_MEANS["model.dtype"]]


def test_config_files_written_against_the_earlier_layout_still_load():
  # What a user's own config file imports: the kept command modules and `esmjax.config` offer the
  # names they did when they were single modules.
  import importlib

  csv_ingest = importlib.import_module("esmjax.data.csv_ingest")
  aliccp = importlib.import_module("esmjax.data.aliccp")
  config = importlib.import_module("esmjax.config")
  assert set(csv_ingest.base_config()) == set(tiny.repo_config("configs/data/aliexpress.py"))
  assert (
    aliccp.default_config().to_dict() == tiny.repo_config("configs/data/aliccp_raw.py").to_dict()
  )
  assert config.default_config().to_dict() == config_lib.default_config().to_dict()
  assert config.validate is config_lib.validate and config.ConfigError is config_lib.ConfigError
