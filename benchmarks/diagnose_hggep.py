"""Why HGGEP's predictions collapse: per-block across-spot spread, gradient norms, MSE vs ZINB, LSTM saturation.

Runs on the training sections of the C6 fold only (train C2–C4, validate C5; C6 never read). For each epoch it
records, on the training section C2 and the validation section C5: the median over panel genes of
sd(prediction across spots) / sd(observed across spots), the across-spot sd of every block's output (relative to
its overall scale), the LSTM gate saturation, per-block gradient norms, and the MSE and ZINB terms.

    python benchmarks/diagnose_hggep.py --out benchmarks/results/hggep_diagnosis/<name>.json [--config k=v ...]
"""

from __future__ import annotations

import argparse
import json
import time

import lightning.pytorch as pl
import numpy as np
import torch

from scst._utils import _atomic_file


def _spread(x: torch.Tensor) -> float:
    """Across-spot sd averaged over features, relative to the features' overall rms."""
    x = x.detach().float().reshape(x.shape[0], -1)
    return float(x.std(0).mean() / (x.pow(2).mean().sqrt() + 1e-12))


class Probe(pl.Callback):
    def __init__(self, model, secs):
        self.model, self.secs, self.rows, self.grads = model, secs, [], {}

    def on_after_backward(self, trainer, plan):
        m = plan.module
        for name, part in [
            ("backbone", m.backbone),
            ("stage_proj", m.stage_proj),
            ("vits", m.vits),
            ("ham", m.ham),
            ("lstm", m.lstm),
            ("gene_head", m.gene_head),
        ]:
            if part is None:
                continue
            g = [p.grad.norm() ** 2 for p in part.parameters() if p.grad is not None]
            self.grads.setdefault(name, []).append(float(torch.stack(g).sum().sqrt()) if g else 0.0)

    def on_train_epoch_end(self, trainer, plan):
        row = {"epoch": trainer.current_epoch, "grad_norm": {k: float(np.mean(v)) for k, v in self.grads.items()}}
        self.grads = {}
        row.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        for sec in self.secs:
            row[sec.name] = probe_section(plan.module, sec, self.model)
        plan.module.train()
        self.rows.append(row)
        print(json.dumps({k: row[k] for k in row if k not in ("grad_norm",)})[:400], flush=True)


@torch.no_grad()
def probe_section(m, sec, model):
    from scst.models._hggep import _coords_for
    from scst.nn import patches_to_input

    m.eval()
    acts = {}
    hooks = [m.backbone.register_forward_hook(lambda mod, i, o: acts.__setitem__("backbone_conv5", o[2]))]
    for j, v in enumerate(m.vits):
        hooks.append(v.register_forward_hook(lambda mod, i, o, j=j: acts.__setitem__(f"vit{j}", o)))
    if m.ham is not None:
        hooks.append(m.ham.register_forward_hook(lambda mod, i, o: acts.__setitem__("ham", o)))
    idx = sec.keep
    x = patches_to_input(sec.patches.get(idx), False)
    out = m(
        x,
        _coords_for(sec, idx, int(model.registry["max_coord"])),
        torch.from_numpy(sec.positions[idx].astype(np.float32)),
    )
    for h in hooks:
        h.remove()
    pred, h = out["pred"].numpy(), out["hidden"]
    obs = sec.target[idx]
    ratio = pred.std(0) / np.maximum(obs.std(0), 1e-8)
    pc = [
        np.corrcoef(pred[:, g], obs[:, g])[0, 1]
        for g in range(obs.shape[1])
        if pred[:, g].std() > 1e-9 and obs[:, g].std() > 0
    ]
    res = {
        "sd_ratio_median": float(np.median(ratio)),
        "pcc_mean": float(np.nanmean(pc)) if pc else 0.0,
        "hidden_spread": _spread(h),
        "hidden_absmean": float(h.abs().mean()),
    }
    res.update({f"spread_{k}": _spread(v) for k, v in acts.items()})
    res.update({f"rms_{k}": float(v.float().pow(2).mean().sqrt()) for k, v in acts.items()})
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--config", nargs="*", default=[])
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    import scst
    from scst.models import HGGEP

    sdata = scst.datasets.her2st(sections=["C2", "C3", "C4", "C5"])
    tab = sdata.tables["table"]
    # the panel from the fit sections only: C5 is where the diagnosis scores the settings (until 2026-12-04 the panel
    # was chosen on C2–C5; the runs recorded before say so on the expression page)
    scst.pp.select_genes(tab, n_top=1000, min_fraction=0.5, sections=["C2", "C3", "C4"])
    HGGEP.setup_sdata(sdata, sections=["C2", "C3", "C4", "C5"])
    cfg = dict(HGGEP.bench_config, max_epochs=a.epochs, patience=a.epochs)
    for kv in a.config:
        k, v = kv.split("=")
        cfg[k] = json.loads(v)
    model = HGGEP(sdata, **cfg)
    secs = [model._section_data(sdata, "table", s, True) for s in ("C2", "C5")]
    probe = Probe(model, secs)
    t0 = time.time()
    model.train(validation="C5", enable_progress_bar=False, callbacks=[probe])
    final = {s.name: probe_section(model.module, s, model) for s in secs}
    res = {
        "config": cfg,
        "epochs": probe.rows,
        "final_restored": final,
        "seconds": time.time() - t0,
        "history": model.history.to_dict("list") if model.history is not None else None,
    }
    with _atomic_file(a.out) as tmp:  # a run of an hour is not left half-written
        tmp.write_text(json.dumps(res, indent=1, default=float))
    print("FINAL", json.dumps(final))


if __name__ == "__main__":
    main()
