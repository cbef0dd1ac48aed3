"""int8 post-training quantisation on CPU for HGGEP's per-spot encoder (a route tried for issue 12; not shipped).

At ``bench_config`` size the per-spot encoder (``HGGEPModule.encode_patches``: GEM on the 112 px patch, the
ShuffleNetV2 x0.5 trunk on the 56 px GEM output, three stage projections) is what limits whole-slide prediction on
CPU. This times, on batches of 96 random patches, random weights, eval mode, ``torch.inference_mode``:

- ``encode_patches fp32`` and the parts of it (GEM, trunk, projections), default layout: the trunk's share bounds
  what any trunk-only speed-up can give;
- the trunk alone (torchvision's quantizable ShuffleNetV2 x0.5 on 56 px input, the same architecture) in fp32,
  fp32 channels-last, and int8 (eager-mode static quantisation with torch.ao: conv-BN-ReLU fused, calibrated on 64
  random inputs, engines ``x86`` and ``onednn``).

Median of ``--reps`` calls per arm. Run from the repository root (writes
``benchmarks/results/scale/quantize_cpu.json``)::

    python benchmarks/bench_quantize_cpu.py --threads 1
    python benchmarks/bench_quantize_cpu.py --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
import warnings
from pathlib import Path

from _page import cpu_name

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "benchmarks" / "results" / "scale" / "quantize_cpu.json"


def _median_s(fn, x, reps: int) -> float:
    import torch

    with torch.inference_mode():
        fn(x), fn(x)  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def run(threads: int, reps: int, batch: int) -> list[dict]:
    import torch
    from torchvision.models.quantization import shufflenet_v2_x0_5

    from scst.nn import HGGEP_BENCH, HGGEPModule

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rows = []

    def row(arm: str, seconds: float, **extra) -> None:
        rows.append({"arm": arm, "threads": threads, "batch": batch, "median_s": seconds,
                     "spots_per_s": batch / seconds, **extra, "torch": torch.__version__, "cpu": cpu_name(),
                     "load": os.getloadavg()})  # fmt: skip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init warnings: weights do not matter for timing
        module = HGGEPModule(50, **HGGEP_BENCH["cpu_small"]["config"]).eval()
    px = HGGEP_BENCH["cpu_small"]["patch_px"]
    x = torch.rand(batch, 3, px, px)
    row("encode_patches fp32", _median_s(module.encode_patches, x, reps))
    with torch.inference_mode():
        g = module.gem(x)
        maps = module.backbone(g)
    row("  GEM", _median_s(module.gem, x, reps))
    row("  trunk (scst backbone)", _median_s(module.backbone, g, reps))
    row("  stage projections", _median_s(lambda _: [p(s) for p, s in zip(module.stage_proj, maps)], None, reps))

    net = shufflenet_v2_x0_5(weights=None, quantize=False).eval()
    g56 = torch.rand(batch, 3, g.shape[-2], g.shape[-1])

    def trunk(m):
        return lambda t: m.conv5(m.stage4(m.stage3(m.stage2(m.conv1(t)))))

    row("trunk fp32", _median_s(trunk(net), g56, reps))
    cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    row("trunk fp32 channels-last", _median_s(trunk(cl), g56.contiguous(memory_format=torch.channels_last), reps))
    ref = trunk(net)(g56)
    for engine in ("x86", "onednn"):
        torch.backends.quantized.engine = engine
        q = copy.deepcopy(net)
        q.fuse_model(is_qat=False)
        q.qconfig = torch.ao.quantization.get_default_qconfig(engine)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao eager-mode quantisation deprecation notice
            torch.ao.quantization.prepare(q, inplace=True)
            with torch.inference_mode():
                for _ in range(4):
                    q(torch.rand(16, 3, g.shape[-2], g.shape[-1]))
            torch.ao.quantization.convert(q, inplace=True)

        def qtrunk(t, q=q):
            return q.dequant(trunk(q)(q.quant(t)))

        with torch.inference_mode():
            out = qtrunk(g56)
        rel = float((out - ref).norm() / ref.norm())
        row(f"trunk int8 ({engine})", _median_s(qtrunk, g56, reps), rel_error_vs_fp32=rel)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--batch", type=int, default=96)
    args = p.parse_args()
    rows = [r for r in (json.loads(RAW.read_text()) if RAW.is_file() else []) if r["threads"] != args.threads]
    new = run(args.threads, args.reps, args.batch)
    for r in new:
        print(f"{r['arm']:<28} {r['threads']} thread(s): {r['spots_per_s']:7.0f} spots/s")
    RAW.parent.mkdir(parents=True, exist_ok=True)
    tmp = RAW.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows + new, indent=1))
    tmp.replace(RAW)


if __name__ == "__main__":
    main()
