"""Time per epoch of MultimodalST's network (``scst.nn.MultimodalModule``) on a device without the scverse stack.

Issue 9 asks for the time per epoch on CPU and, when one is lent, on a GPU. MultimodalST trains through Lightning,
which the GPU machines lack, so this script times the product's own step, :func:`scst.nn.train_step` on
``module.loss(batch)`` (what Lightning's ``TrainingPlan`` calls), on data of the benchmark's shape: 732 paired
training spots (C2–C5), 1,196 genes in the 7 gene groups of the multimodal page (279/227/153/134/131/95/177),
8 cluster labels, minibatches of 64, ``bench_config`` sizes, and the image side either the shipped MLP on 285
multi-scale features or the ViT on 64 px patches with 8 px sub-patches; ``rna_pcs=10`` as shipped. The numbers are
synthetic (random expression, features and patches): only the time is measured, not what is learned. Both stages
(unimodal pre-training, joint) are timed, after one untimed warm-up epoch each::

    PYTHONPATH=src python benchmarks/gpu_multimodal.py --device cuda --out $OUT/multimodal_cuda.json
    PYTHONPATH=src python benchmarks/gpu_multimodal.py --device cpu --out benchmarks/_out/multimodal_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from scst.nn import train_step
from scst.nn._multimodal import MultimodalModule

GROUP_SIZES = (279, 227, 153, 134, 131, 95, 177)
N_SPOTS, N_LABELS, N_FEATURES, PX, BATCH = 732, 8, 285, 64, 64
CONFIG = {"dim": 64, "rna_depth": 2, "image_depth": 2, "fusion_depth": 1, "heads": 4, "embed_dim": 64,
          "sub_patch": 8}  # fmt: skip  # MultimodalST.bench_config


def _data(encoder: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n_genes = sum(GROUP_SIZES)
    labels = rng.integers(0, N_LABELS, N_SPOTS)
    img = (
        rng.normal(size=(N_SPOTS, N_FEATURES)).astype(np.float32)
        if encoder == "mlp"
        else rng.integers(0, 256, (N_SPOTS, 3, PX, PX), dtype=np.uint8)
    )
    return {"rna": np.log1p(rng.poisson(2.0, (N_SPOTS, n_genes))).astype(np.float32), "img": img, "label": labels}


def _batch(d: dict, idx: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """The batch dict of ``scst.models._multimodal._Items.collate`` for paired items ``idx``."""
    n = len(idx)
    lab = torch.from_numpy(d["label"][idx])
    return {
        "rna": torch.from_numpy(d["rna"][idx]).to(device),
        "img": torch.from_numpy(d["img"][idx]).to(device),
        "has_rna": torch.ones(n, dtype=torch.bool, device=device),
        "has_img": torch.ones(n, dtype=torch.bool, device=device),
        "rna_id": torch.from_numpy(idx).to(device),
        "rna_group": lab.to(device),
        "img_group": lab.to(device),
    }


def time_encoder(encoder: str, device: torch.device, epochs: int, precision: str, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    d = _data(encoder, rng)
    group_of_gene = np.repeat(np.arange(len(GROUP_SIZES)), GROUP_SIZES)
    extra = {"image_encoder": "mlp", "image_features": N_FEATURES} if encoder == "mlp" else {"image_px": PX}
    module = MultimodalModule(group_of_gene, rna_pcs=10, **CONFIG, **extra)
    with torch.no_grad():  # what MultimodalST.train fits on the training RNA; any orthonormal basis times the same
        module.rna_basis.copy_(torch.linalg.qr(torch.randn(len(group_of_gene), 10))[0])
    module = module.to(device).train()
    out = {"encoder": encoder, "precision": precision, "parameters": sum(p.numel() for p in module.parameters())}
    for stage in ("pretrain", "joint"):
        module.stage = stage
        opt = torch.optim.AdamW(module.parameters(), lr=5e-4)
        times = []
        for epoch in range(epochs + 1):  # epoch 0: warm-up, not timed
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            order = rng.permutation(N_SPOTS)
            for i in range(0, N_SPOTS, BATCH):
                idx = order[i : i + BATCH]
                if len(idx) > 1:
                    train_step(module, _batch(d, idx, device), opt, precision=precision)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if epoch:
                times.append(time.perf_counter() - t0)
        out[stage] = {"s_per_epoch": float(np.median(times)), "epochs_timed": epochs}
    if device.type == "cuda":
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per stage (after one warm-up epoch)")
    p.add_argument("--precision", default="32", help="32 or bf16 (scst.nn.train_step)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    res = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "loadavg": os.getloadavg(),
        "n_spots": N_SPOTS, "batch_size": BATCH, "config": CONFIG, "synthetic": True,
        "runs": [time_encoder(e, device, a.epochs, a.precision) for e in ("mlp", "vit")],
    }  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(a.out)
    for r in res["runs"]:
        print(f"{res['device']} {r['encoder']}: pre-training {r['pretrain']['s_per_epoch']:.3f} s/epoch, joint "
              f"{r['joint']['s_per_epoch']:.3f} s/epoch ({r['parameters']:,} parameters)")  # fmt: skip


if __name__ == "__main__":
    main()
