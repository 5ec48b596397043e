"""Compressed block records: disk per row, the converter's rows/s and the trainer's input pipeline's
rows/s, plain against zstd and lz4, on the Ali-CCP-shaped world of
`esmjax.data.synthetic.aliccp_world`; and the converter on gzip input against the same files
decompressed.

    python benchmarks/block_codec.py [--scale=0.004] [--reps=5] [--seconds=2]

One raw world (gzip, generated once into a temporary directory), converted once per codec (the
converter's wall time and rows/s, in turn); then `pipeline.train_iter_dataset` as the trainer builds
it (batch 1,024, shuffled windows, checksums on) read round-robin, `--reps` runs of `--seconds`
per codec, medians and ratios to plain. Writes benchmarks/results/block_codec.{md,json} (or
--out_dir).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

CODECS = ("none", "zstd", "lz4")


@dataclasses.dataclass
class Opts(harness.Options):
  scale: float = harness.opt(0.004, "scale of the generated Ali-CCP-shaped world")
  reps: int = harness.opt(5, "round-robin pipeline runs per codec")
  seconds: float = harness.opt(2.0, "seconds per pipeline run")


def _flags(have: list[str]) -> str:
  return ", ".join(f"{f} {'yes' if f in have else 'no'}" for f in ("avx512_bf16", "amx_bf16"))


def _rate(data_dir: str, seconds: float) -> float:
  from esmjax.data.format import dataset as ds_lib
  from esmjax.data.pipeline import batches as pipeline

  d = ds_lib.open_dataset(data_dir)
  cfg = pipeline.PipelineConfig(batch_size=1024, seed=0, shuffle=True, prefetch=2)
  it = iter(pipeline.train_iter_dataset(d, cfg))
  next(it)
  rows, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    rows += len(next(it)["user"])
  rate = rows / (time.perf_counter() - t0)
  close = getattr(it, "close", None)
  if close:
    close()
  return rate


def main(argv=None) -> None:
  args = harness.parse(Opts, argv, __doc__)
  from esmjax.common import absl_flags
  from esmjax.data.ingest.aliccp import convert as aliccp
  from esmjax.data.synthetic import aliccp_world

  absl_flags.ensure_parsed("block_codec")
  prov = harness.Record("block_codec", args)
  tmp = tempfile.mkdtemp(prefix="block_codec_")
  world = aliccp_world.generate(os.path.join(tmp, "raw"), args.scale, 0, progress=False)
  sk = os.path.join(tmp, "raw", world["splits"]["train"]["files"]["skeleton"])
  cf = os.path.join(tmp, "raw", world["splits"]["train"]["files"]["common"])
  conv = {}
  for c in CODECS:
    out = os.path.join(tmp, c)
    t0 = time.time()
    m = aliccp.convert(sk, cf, out, workers=2, compression=c, progress=False)
    wall = time.time() - t0
    size = sum(os.path.getsize(os.path.join(out, s["path"])) for s in m["shards"])
    conv[c] = {
      "rows": m["num_rows"],
      "seconds": wall,
      "rows_per_s": m["num_rows"] / wall,
      "bytes_per_row": size / m["num_rows"],
    }
  import gzip
  import shutil

  plain = {}
  for name, src in (("sk", sk), ("cf", cf)):
    plain[name] = src[: -len(".gz")]
    with gzip.open(src, "rb") as fi, open(plain[name], "wb") as fo:
      shutil.copyfileobj(fi, fo, 1 << 24)
  inputs = {"gzip": (sk, cf), "plain text": (plain["sk"], plain["cf"])}
  inp = {k: [] for k in inputs}
  for r in range(2):
    for k, (a, b) in inputs.items():
      out = os.path.join(tmp, f"in-{k}-{r}".replace(" ", "_"))
      t0 = time.time()
      m = aliccp.convert(a, b, out, workers=2, compression="none", progress=False)
      inp[k].append(m["num_rows"] / (time.time() - t0))
      shutil.rmtree(out)
  runs = {c: [] for c in CODECS}
  loads = []
  for _ in range(args.reps):
    for c in CODECS:
      runs[c].append(_rate(os.path.join(tmp, c), args.seconds))
      loads.append(harness.load_average()[:1])
  med = {c: statistics.median(v) for c, v in runs.items()}
  rows = [
    [
      c,
      f"{conv[c]['bytes_per_row']:.1f}",
      f"{conv[c]['rows_per_s']:,.0f}",
      f"{med[c]:,.0f}",
      f"{statistics.median(a / b for a, b in zip(runs[c], runs['none'], strict=True)):.2f}",
    ]
    for c in CODECS
  ]
  ratio = statistics.median(inp["gzip"]) / statistics.median(inp["plain text"])
  m = prov["machine"]
  md = "\n".join(
    [
      "# Compressed block records (benchmarks/block_codec.py)",
      "",
      f"`{prov['command']}` — {prov['when']}; {m['cpu']} ({_flags(m['cpu_bf16_flags'])}), "
      f"{prov['machine']['cores']} cores; load average {prov['load_before']} before, "
      f"{prov.finish()['load_after']} after (shared machine: rates are lower bounds, ratios are "
      "what to read). " + harness.code_line(prov),
      "",
      f"World: `esmjax.data.synthetic.aliccp_world` at scale {args.scale} (training split, "
      f"{conv['none']['rows']:,} rows, gzip input). Converter: one run per codec, 2 workers. "
      f"Pipeline: `train_iter_dataset` as the trainer builds it (batch 1,024, shuffle, checksums "
      f"on), {args.reps} round-robin runs of {args.seconds:g} s per codec; medians, and the "
      "median of the per-round ratios to plain.",
      "",
      harness.markdown_table(
        ["codec", "B/row on disk", "converter rows/s", "pipeline rows/s", "pipeline vs plain"],
        rows,
      ),
      "",
      "Converter input (block compression none; 2 rounds, alternating; rows/s median): "
      + ", ".join(f"{k} {statistics.median(v):,.0f}" for k, v in inp.items())
      + f"; gzip / plain = {ratio:.2f}"
      " (the converting process decompresses the stream once, alone; the workers parse).",
      "",
    ]
  )
  prov.update(converter=conv, pipeline_rows_per_s=runs, input_rows_per_s=inp, loads=loads)
  prov.write(md)
  print(md)
  shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
