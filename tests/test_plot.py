"""python -m esmjax.plot: a PNG of the training curves from metrics.jsonl."""

import numpy as np
import pytest

from esmjax.evaluation import metrics_io, plot


def _fake_run(workdir, resumed=False):
  w = metrics_io.MetricWriter(str(workdir), tensorboard=False)
  for step in range(10, 110, 10):
    w.write(
      step,
      "train",
      {
        "loss": 1.0 / step,
        "loss/ctr": 0.6 / step,
        "loss/ctcvr": 0.4 / step,
        "examples_per_sec": 1000.0 + step,
      },
    )
    if step % 50 == 0:
      w.write(
        step,
        "eval",
        {
          "ctr/auc": 0.6 + step / 1000,
          "cvr/auc": 0.55 + step / 1000,
          "ctcvr/auc": 0.65,
          "cvr/entire_space_auc": 0.58,
          "ctr/logloss": 0.3,
          "cvr/logloss": 0.4,
          "ctcvr/logloss": float("nan"),
        },
      )
  if resumed:  # a resumed run logs steps 60.. again: the later values win
    w.write(60, "train", {"loss": 123.0})
  w.close()


def test_series_takes_the_last_value_of_a_step(tmp_path):
  _fake_run(tmp_path, resumed=True)
  recs = metrics_io.read_metrics(str(tmp_path))
  steps, values = plot._series(recs, "train", "loss")
  assert steps == list(range(10, 110, 10)) and values[5] == 123.0
  steps, values = plot._series(recs, "eval", "ctcvr/logloss")
  assert steps == [50, 100] and all(np.isnan(values))  # "nan" strings come back as NaN
  assert plot._series(recs, "eval", "ctavr/auc") == ([], [])


def test_plot_writes_a_png_with_four_panels(tmp_path):
  import matplotlib.image

  _fake_run(tmp_path)
  assert plot.main([str(tmp_path)]) == 0
  img = matplotlib.image.imread(str(tmp_path / "curves.png"))
  h, w = img.shape[:2]
  assert (h, w) == (675, 990)
  # Every quadrant has drawn (non-white) pixels: four panels with curves.
  for q in (
    img[: h // 2, : w // 2],
    img[: h // 2, w // 2 :],
    img[h // 2 :, : w // 2],
    img[h // 2 :, w // 2 :],
  ):
    assert (q[..., :3] < 0.5).mean() > 0.005
  out = tmp_path / "sub" / "c.png"
  assert plot.plot(str(tmp_path), str(out)) == str(out) and out.stat().st_size > 10_000


def test_missing_metrics_is_a_clear_error(tmp_path, capsys):
  assert plot.main([str(tmp_path / "nope")]) == 2
  assert "no metrics in" in capsys.readouterr().err
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    plot.plot(str(tmp_path))
