#!/usr/bin/env python
"""Export a checkpoint to TorchScript or ONNX, and check it reproduces the PyTorch logits.

    python tools/export.py runs/demo/best.pt --format torchscript [--out model.ts]
    python tools/export.py runs/demo/best.pt --format onnx [--out model.onnx]

The exported model takes one normalised clip batch `[B, 3, T, H, W]` (the checkpoint's
clip length and crop) and returns logits; a `.json` beside it carries the class names
and the preprocessing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from videoft.errors import report_user_errors
from videoft.inference import load_model


def export(checkpoint: str, fmt: str, out: str | None = None, *, atol: float = 1e-4) -> tuple[Path, float]:
    """Write the model; return its path and the max |logit difference| against PyTorch on a test clip."""
    model, ckpt = load_model(checkpoint, "cpu")
    pre = ckpt.preprocessing
    example = torch.randn(2, 3, pre.clip_len, pre.crop_size, pre.crop_size,
                          generator=torch.Generator().manual_seed(0))
    path = Path(out) if out else Path(checkpoint).with_suffix(".ts" if fmt == "torchscript" else ".onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        expected = model(example)
        _make_traceable(model)  # after `expected`: the check compares with the model as loaded
        if fmt == "torchscript":
            # check_trace would run the model twice more; the reloaded file is checked below
            traced = torch.jit.trace(model, example, check_trace=False)
            traced.save(str(path))
            got = torch.jit.load(str(path))(example)
        else:
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                onnxruntime = None
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17,
                              input_names=["video"], output_names=["logits"],
                              dynamic_axes={"video": {0: "batch"}, "logits": {0: "batch"}})
            got = _run_onnx(path, example) if onnxruntime is not None else None
    diff = float((expected - got).abs().max()) if got is not None else float("nan")
    if got is not None and diff > atol:
        raise RuntimeError(f"exported model differs from PyTorch by {diff:.2e} (> {atol})")
    meta = {"classes": ckpt.classes, "backbone": ckpt.backbone, "preprocessing": pre.as_dict(),
            "input": ["batch", 3, pre.clip_len, pre.crop_size, pre.crop_size]}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return path, diff


def _make_traceable(model: torch.nn.Module) -> None:
    """Swap pytorchvideo's Swish (a Python autograd.Function, which a TorchScript file cannot
    hold: X3D fails to save) for nn.SiLU, the same function x * sigmoid(x)."""
    from pytorchvideo.layers.swish import Swish

    for name, module in list(model.named_modules()):
        if isinstance(module, Swish):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, torch.nn.SiLU())


def _run_onnx(path: Path, example: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"video": example.numpy()})[0])


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--format", choices=("torchscript", "onnx"), required=True)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    path, diff = export(args.checkpoint, args.format, args.out)
    check = f"max |logit diff| vs PyTorch: {diff:.2e}" if diff == diff else "not checked (onnxruntime not installed)"
    print(f"wrote {path} ({check})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
