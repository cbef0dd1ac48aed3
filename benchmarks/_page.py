"""What the benchmark pages share: the machine line, the 'Reproduce' footer (written atomically), the ``--encoder``
options."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
from pathlib import Path

from scst._utils import _atomic_file


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (the machine behind these pages changes from day to day), and whether it
    has native bf16 (``avx512_bf16``/``amx_bf16``; without, bf16 autocast is emulated and slower)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    bf16 = "native bf16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "no native bf16"
    return f"{name or platform.machine()} ({bf16})"


#: ``cpu`` of :func:`machine_line` for runs recorded before their CPU model was: the architecture only.
CPU_NOT_RECORDED = f"{platform.machine()} (CPU model not recorded)"


def machine_line(load_before: tuple[float, ...], load_after: tuple[float, ...], cpu: str | None = None) -> str:
    """CPU, core count, the 1-min load average around the run (the cores are shared) and the torch version.

    ``cpu``: the CPU the run recorded (a page rewritten later from saved results must not name today's); default:
    this machine's.
    """
    import torch  # here, not at the top: scripts import this module in children whose memory they measure

    return (
        f"Machine: {cpu or cpu_name()}, {os.cpu_count()} CPU cores **shared with other "
        f"jobs during the run** (1-min load average {load_before[0]:.1f} before, {load_after[0]:.1f} after), "
        f"torch {torch.__version__}."
    )


def write_page(out: Path, lines: list[str], command: str, raw: dict | None = None) -> None:
    """Append the 'Reproduce' block for ``command``, write ``out`` atomically and print the page.

    ``raw`` (the measurements behind the page) goes to ``benchmarks/results/<page name>/results.json``.
    """
    results = Path(__file__).resolve().parent / "results" / out.stem / "results.json"
    where = f" (raw results: `benchmarks/results/{out.stem}/results.json`)" if raw is not None else ""
    lines = [*lines, "", f"Reproduce{where}:", "", "```bash", command, "```", ""]
    if raw is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
        with _atomic_file(results) as tmp:
            tmp.write_text(json.dumps({"command": command, **raw}, indent=1, default=float))
    out.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_file(out) as tmp:
        tmp.write_text("\n".join(lines))
    print("\n".join(lines))


def add_encoder_args(p: argparse.ArgumentParser, what: str) -> None:
    """``--encoder`` and its options (``what``: the rows or variants it adds), shared by the benchmarks that measure a
    named image encoder (``scst.tl.embed_patches``)."""
    p.add_argument("--encoder", default=None, help=f"image encoder of {what} (scst.tl.embed_patches name)")
    p.add_argument("--weights", default=None, help="its weights= (e.g. pretrained, IMAGENET1K_V1, a local file)")
    p.add_argument("--encoder-kwargs", default=None, help="its encoder_kwargs= as JSON")
    p.add_argument("--encoder-um", type=float, default=112.0, help="field of view (µm) of its patches")
    p.add_argument("--encoder-px", type=int, default=224, help="patch size (px) its input is resized to")
    p.add_argument("--device", default="cpu", help="device of the embedding step (e.g. cuda)")


def encoder_spec(args: argparse.Namespace) -> dict | None:
    """The encoder of :func:`add_encoder_args`' options (None without ``--encoder``); the device is not part of it."""
    if not args.encoder:
        return None
    kwargs = json.loads(args.encoder_kwargs) if args.encoder_kwargs else None
    return {"name": args.encoder, "weights": args.weights, "kwargs": kwargs, "um": args.encoder_um,
            "px": args.encoder_px}  # fmt: skip


def encoder_tag(name: str) -> str:
    """A file-name form of an encoder name (``hf-hub:MahmoodLab/UNI`` → ``hf_hub_mahmoodlab_uni``)."""
    return re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower()
