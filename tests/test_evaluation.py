"""Dead towers flagged: a task whose predictions are (nearly) constant is marked collapsed in the
metrics and named in a warning; healthy models on the tiny worlds never are."""

import logging

import jax
import numpy as np
import pytest
import tiny

import esmjax
from esmjax.data.format import dataset as ds_lib
from esmjax.evaluation import metrics as M
from esmjax.evaluation import scoring as evaluation


def _cols(n=400, seed=0, **preds):
  rng = np.random.default_rng(seed)
  click = rng.random(n) < 0.3
  buy = click & (rng.random(n) < 0.3)
  cols = {"labels": np.stack([click, buy], 1).astype(np.uint8), "user": rng.integers(0, 40, n)}
  base = {"pctr": rng.uniform(0.05, 0.6, n), "pcvr": rng.uniform(0.05, 0.6, n)}
  base.update({k: np.full(n, v, np.float64) for k, v in preds.items()})
  base["pctcvr"] = base["pctr"] * base["pcvr"]
  return {**cols, **base}


SCHEMA = tiny.tiny_schema(labels=("click", "buy"), truth=())


def test_logit_std_by_hand():
  p = np.asarray([0.5, 1 / (1 + np.exp(-2.0))])  # logits 0 and 2: std 1
  assert M.logit_std(p) == pytest.approx(1.0, rel=1e-12)
  assert M.logit_std(np.full(5, 0.3)) == 0.0
  assert M.logit_std([0.0, 0.0]) == 0.0  # clipped to 1e-7 alike
  assert np.isnan(M.logit_std([0.2]))
  with pytest.raises(ValueError, match="logit_std: `probs` must be probabilities"):
    M.logit_std([0.2, np.nan])


def test_constant_predictions_are_flagged_and_named(caplog):
  with caplog.at_level(logging.WARNING):
    m = evaluation.compute_metrics(_cols(pcvr=0.125), SCHEMA)
  assert m["cvr/collapsed"] == 1.0 and m["cvr/logit_std"] == 0.0 and m["cvr/auc"] == 0.5
  assert m["ctr/collapsed"] == m["ctcvr/collapsed"] == 0.0 and m["ctr/logit_std"] > 0.3
  assert evaluation.collapsed_tasks(m) == ["cvr"]
  assert (
    "evaluation: the cvr predictions are collapsed (a dead tower?): their logits' std is 0 "
    f"over {int(m['n/clicks'])} clicked rows (below 0.001), pcvr in [0.125, 0.125]; cvr/auc "
    "means nothing" in caplog.text
  )
  assert "the ctr predictions" not in caplog.text


def test_a_cvr_tower_constant_on_the_clicked_rows_is_flagged_whatever_the_unclicked_rows_say(
  caplog,
):
  # ESMM at lr 0.3: pCVR constant on all but a few unclicked rows, cvr/auc exactly 0.5. Over
  # every row the outliers lift the spread far above the threshold; over the clicked rows (the
  # CVR task's own) it is 0.
  cols = _cols(n=8000, pcvr=0.25)
  unclicked = np.flatnonzero(cols["labels"][:, 0] == 0)[:3]
  cols["pcvr"][unclicked] = [0.01, 0.9, 0.5]
  cols["pctcvr"] = cols["pctr"] * cols["pcvr"]
  assert M.logit_std(cols["pcvr"]) > 0.05  # what a judge over every row sees
  with caplog.at_level(logging.WARNING):
    m = evaluation.compute_metrics(cols, SCHEMA)
  assert m["cvr/auc"] == 0.5 and m["cvr/logit_std"] == 0.0 and m["cvr/collapsed"] == 1.0
  assert evaluation.collapsed_tasks(m) == ["cvr"]
  assert f"over {int(m['n/clicks'])} clicked rows" in caplog.text
  # The CTR head, constant on the clicked rows only, is judged on every row: not collapsed.
  cols = _cols(n=8000)
  click = cols["labels"][:, 0] == 1
  cols["pctr"][click] = 0.3
  m = evaluation.compute_metrics(cols, SCHEMA)
  assert m["ctr/collapsed"] == 0.0 and m["cvr/collapsed"] == 0.0


def test_nearly_constant_predictions_are_flagged_and_a_small_real_spread_is_not():
  rng = np.random.default_rng(1)
  nearly = 0.02 * (1 + 1e-4 * rng.standard_normal(400))  # logit std ~1e-4
  m = evaluation.compute_metrics(_cols(pctr=nearly), SCHEMA)
  assert evaluation.collapsed_tasks(m) == ["ctr"] and m["ctr/logit_std"] < 2e-4
  small = 0.02 * np.exp(0.005 * rng.standard_normal(400))  # logit std ~5e-3: not flagged
  m = evaluation.compute_metrics(_cols(pctr=small), SCHEMA)
  assert evaluation.collapsed_tasks(m) == [] and 4e-3 < m["ctr/logit_std"] < 6e-3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("collapse")
  tiny.tiny_dataset(str(root / "train"), n=1024)
  tiny.tiny_dataset(str(root / "eval"), n=300, seed=1)
  out = {}
  for name, steps, dense in (("esmm", 1, "none"), ("esm2", 1, "tanh"), ("esmm_ns", 2, "bucket")):
    cfg = tiny.tiny_config(name, **{"train.num_steps": steps, "model.dense_mode": dense})
    cfg.data.train_dir, cfg.data.eval_dir = str(root / "train"), str(root / "eval")
    out[name] = esmjax.train(cfg, str(root / name))
  return root, out


def test_healthy_tiny_models_are_never_flagged(trained):
  _, runs = trained
  for name, summary in runs.items():
    m = summary["metrics"]
    tasks = ["ctr", "cvr", "ctcvr"] + (["ctavr"] if name == "esm2" else [])
    assert [m[f"{t}/collapsed"] for t in tasks] == [0.0] * len(tasks), name
    assert min(m[f"{t}/logit_std"] for t in tasks) > 10 * evaluation.COLLAPSED_LOGIT_STD, name
    assert evaluation.collapsed_tasks(m) == []
    assert summary["collapsed_tasks"] == []  # and summary.json says so


def test_a_dead_cvr_tower_is_flagged(trained, caplog):
  root, _ = trained
  model = esmjax.load(str(root / "esmm"))
  params = jax.tree_util.tree_map(lambda x: x, model.state.params)
  last = sorted(params["tower_cvr"])[-1]  # the output layer: weights 0 leave its bias alone
  params["tower_cvr"][last]["kernel"] = params["tower_cvr"][last]["kernel"] * 0
  model.state = model.state.replace(params=params)
  with caplog.at_level(logging.WARNING):
    m = model.evaluate(str(root / "eval"))
  assert evaluation.collapsed_tasks(m) == ["cvr"] and m["cvr/logit_std"] == 0.0
  assert "the cvr predictions are collapsed" in caplog.text


def test_ctavr_is_evaluated_on_logs_with_cart_and_wish_but_no_daction():
  # DAction = cart ∨ wish: the same metrics as with the column recorded.
  rng = np.random.default_rng(0)
  n = 400
  click = rng.random(n) < 0.5
  cart, wish = click & (rng.random(n) < 0.3), click & (rng.random(n) < 0.3)
  buy = click & (rng.random(n) < 0.2)
  preds = {k: rng.uniform(0.01, 0.99, n) for k in ("pctr", "pcvr", "pctcvr", "pctavr")}
  users = rng.integers(0, 20, n)

  def cols(labels):
    return {"labels": np.stack(labels, 1).astype(np.uint8), "user": users, **preds}

  with_column = evaluation.compute_metrics(
    cols([click, buy, cart, wish, cart | wish]),
    ds_lib.Schema(labels=("click", "buy", "cart", "wish", "daction")),
  )
  derived = evaluation.compute_metrics(
    cols([click, buy, cart, wish]), ds_lib.Schema(labels=("click", "buy", "cart", "wish"))
  )
  assert derived["ctavr/auc"] == with_column["ctavr/auc"] and "ctavr/gauc" in derived
  cart_only = evaluation.compute_metrics(
    cols([click, buy, cart]), ds_lib.Schema(labels=("click", "buy", "cart"))
  )
  assert cart_only["n/dactions"] == cart.sum()


def test_metrics_sorted_on_the_device_equal_the_host_ones(trained):
  # 300 eval rows in batches of 128: the padding of the last batch is cut on the device.
  root, _ = trained
  for name in ("esmm", "esm2"):
    model = esmjax.load(str(root / name))
    dataset = ds_lib.open_dataset(str(root / "eval"))
    run = model.run
    got = {
      where: evaluation.evaluate(
        run.predict_step, model.state, dataset, 128, run.mesh, metrics_on=where
      )
      for where in ("host", "device")
    }
    assert sorted(got["device"]) == sorted(got["host"]) and got["host"]["n/impressions"] == 300
    for k, v in got["host"].items():
      assert got["device"][k] == pytest.approx(v, rel=1e-12, nan_ok=True), (name, k)
    assert got["device"]["cvr/auc"] == got["host"]["cvr/auc"]  # 0/1 labels: bit-equal
    capped = evaluation.evaluate(
      run.predict_step, model.state, dataset, 128, run.mesh, max_rows=128, metrics_on="device"
    )
    assert capped["n/impressions"] == 128
