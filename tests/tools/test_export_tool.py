"""tools/export.py: TorchScript and ONNX files reproduce the PyTorch logits of the checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from videoft.inference import load_model

from .tool_helpers import CLASSES, GEOMETRY, load_tool


@pytest.fixture(scope="module")
def reference(plain_checkpoint) -> tuple[torch.Tensor, torch.Tensor]:
    """A test batch (3 clips: not the exporter's own batch of 2) and the PyTorch logits on it."""
    model, _ = load_model(plain_checkpoint, "cpu")
    size = GEOMETRY["crop_size"]
    clips = torch.randn(3, 3, GEOMETRY["clip_len"], size, size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return clips, model(clips)


def check_meta(path) -> None:
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["classes"] == CLASSES and meta["backbone"] == "x3d_xs"
    assert meta["preprocessing"] == GEOMETRY
    assert meta["input"] == ["batch", 3, GEOMETRY["clip_len"], GEOMETRY["crop_size"], GEOMETRY["crop_size"]]


def test_torchscript_reproduces_logits(plain_checkpoint, reference, tmp_path, capsys):
    out = tmp_path / "model.ts"
    assert load_tool("export").main([str(plain_checkpoint), "--format", "torchscript", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    clips, expected = reference
    with torch.no_grad():
        got = torch.jit.load(str(out))(clips)
    assert got.shape == (3, len(CLASSES))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    check_meta(out)


def test_onnx_reproduces_logits(plain_checkpoint, reference, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    assert load_tool("export").main([str(plain_checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    assert "max |logit diff| vs PyTorch" in capsys.readouterr().out  # checked, not skipped
    clips, expected = reference
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"video": clips.numpy()})
    assert got.shape == (3, len(CLASSES))
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=0)
    check_meta(out)
