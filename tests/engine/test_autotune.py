"""CPU step format (train.amp / train.channels_last = auto): candidates, the choice rule, timing on a copy, cache."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from videoft.engine import autotune
from videoft.engine.autotune import (
    Measurement,
    StepFormat,
    candidates,
    choose_step_format,
    fastest,
    gradient_error,
    measure_step,
)
from videoft.models.classifier import build_classifier

FP32, FP32_CL = StepFormat(None, False), StepFormat(None, True)
BF16, BF16_CL = StepFormat(torch.bfloat16, False), StepFormat(torch.bfloat16, True)


def test_candidates_keep_fixed_settings_and_need_native_bf16():
    assert candidates("auto", "auto", native_bf16=True) == [FP32, FP32_CL, BF16, BF16_CL]
    assert candidates("auto", "auto", native_bf16=False) == [FP32, FP32_CL]  # emulated bf16 is never faster
    assert candidates("off", "auto", native_bf16=True) == [FP32, FP32_CL]
    assert candidates("bf16", "off", native_bf16=False) == [BF16]
    assert candidates("auto", "on", native_bf16=True) == [FP32_CL, BF16_CL]


def test_fastest_prefers_the_simpler_format_within_the_margin():
    assert fastest({FP32: 1.0, FP32_CL: 0.6, BF16: 0.8, BF16_CL: 0.5}) == BF16_CL
    assert fastest({FP32: 1.0, FP32_CL: 0.6, BF16: 0.8, BF16_CL: 0.59}) == FP32_CL  # 2% is not worth bf16
    assert fastest({FP32: 1.0, FP32_CL: 0.98, BF16: 1.3, BF16_CL: 1.2}) == FP32
    assert fastest({FP32_CL: 1.0, BF16_CL: 0.7}) == BF16_CL


def test_measuring_leaves_the_model_untouched_and_gives_the_fp32_gradient():
    torch.manual_seed(0)
    model = build_classifier("x3d_xs", 3, clip_len=2, crop_size=32).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = measure_step(model, FP32, batch=2, clip_len=2, crop=32, num_classes=3, steps=1)
    layout = measure_step(model, FP32_CL, batch=2, clip_len=2, crop=32, num_classes=3, steps=1)
    assert plain.seconds > 0 and layout.seconds > 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    assert all(p.grad is None for p in model.parameters())
    assert next(model.parameters()).is_contiguous()  # the layout change happened on the copy
    # the gradient is the model's: the same clips give the same gradient in a layout that computes it right
    assert plain.gradient.numel() == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert gradient_error(layout.gradient, plain.gradient) < 1e-4
    assert gradient_error(torch.full_like(plain.gradient, float("nan")), plain.gradient) == float("inf")


def _recorded(measured: list, gradients: dict | None = None):
    """The real measurement, recorded; `gradients` replaces a format's gradient by a function of the fp32 one."""
    reference = {}

    def measure(model, fmt, **kw):
        measured.append(fmt)
        m = measure_step(model, fmt, **kw, steps=1)
        reference.setdefault("fp32", m.gradient)
        if gradients and fmt in gradients:
            return Measurement(m.seconds, gradients[fmt](reference["fp32"]))
        return m
    return measure


ARGS = dict(amp_mode="auto", channels_last_mode="auto", backbone="x3d_xs", batch=2, clip_len=2, crop=32,
            num_classes=3, frozen_stages=0)


def test_choice_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEOFT_CACHE", str(tmp_path))
    monkeypatch.setattr(autotune, "cpu_has_native_bf16", lambda: True)
    model = build_classifier("x3d_xs", 3, clip_len=2, crop_size=32)
    measured = []
    first = choose_step_format(model, **ARGS, measure=_recorded(measured))
    assert measured == [FP32, FP32_CL, BF16, BF16_CL]
    cache = json.loads((tmp_path / "autotune.json").read_text())
    assert list(cache.values()) == [first.name]
    assert choose_step_format(model, **ARGS, measure=_recorded(measured)) == first and len(measured) == 4
    # another geometry is another entry
    choose_step_format(model, **{**ARGS, "crop": 40}, measure=_recorded(measured))
    assert len(measured) == 8 and len(json.loads((tmp_path / "autotune.json").read_text())) == 2
    # a fixed choice is not measured at all
    assert choose_step_format(model, **{**ARGS, "amp_mode": "off", "channels_last_mode": "off"},
                              measure=_recorded(measured)) == FP32 and len(measured) == 8


def test_a_format_whose_gradient_is_wrong_is_refused(tmp_path, monkeypatch, caplog):
    """torch 2.14.1's CPU bf16 convolution gives S3D NaN gradients: such a format is never chosen, however fast."""
    monkeypatch.setattr(autotune, "cpu_has_native_bf16", lambda: True)
    caplog.set_level(logging.INFO, logger="videoft")
    model = build_classifier("x3d_xs", 3, clip_len=2, crop_size=32)
    wrong = {BF16: lambda g: g * float("nan"), BF16_CL: lambda g: g * 1.5, FP32_CL: lambda g: g * 1.05}
    fmt = choose_step_format(model, **ARGS, measure=_recorded([], wrong), cache_file=tmp_path / "a.json")
    assert fmt == FP32
    assert "bf16 " in caplog.text and "not finite" in caplog.text and caplog.text.count("(refused)") == 3
    # within the tolerance (bf16: 15%, fp32: 1%) a format stays a candidate
    close = {BF16: lambda g: g * 1.1, FP32_CL: lambda g: g * 1.005, BF16_CL: lambda g: g * 1.1}
    choose_step_format(model, **ARGS, measure=_recorded([], close), cache_file=tmp_path / "b.json")
    assert "(refused)" not in caplog.text.split("step format:")[-1]


def test_the_real_bf16_error_on_s3d_is_caught():
    """The torch/oneDNN fault itself (a Conv3d with a (3, 1, 1) kernel over 2 frames): if a new torch fixes it,
    this test fails and the refusal note in README and autotune can go."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(64, 64, (3, 1, 1), padding=(1, 0, 0), bias=False)
    x = torch.randn(2, 64, 2, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(x).float().sum().backward()
    bf16 = conv.weight.grad.clone()
    conv.weight.grad = None
    conv(x).sum().backward()
    if not autotune.cpu_has_native_bf16():
        pytest.skip("no native bf16 on this CPU: the fault is in the AVX512-BF16 kernels")
    assert gradient_error(bf16.double().flatten(), conv.weight.grad.double().flatten()) > 1.0


def test_unwritable_cache_costs_only_a_warning(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    model = build_classifier("x3d_xs", 3, clip_len=2, crop_size=32)
    fmt = choose_step_format(model, **{**ARGS, "amp_mode": "off"}, measure=_recorded([]),
                             cache_file=blocker / "sub" / "autotune.json")
    assert fmt in (FP32, FP32_CL)
    assert "could not write the step-format cache" in caplog.text


@pytest.mark.parametrize("text, expected", [("on", "on"), ("true", "on"), ("off", "off"), ("false", "off"),
                                            ("auto", "auto")])
def test_channels_last_setting_reads_yaml_booleans(text, expected):
    from videoft.config import load_config
    cfg = load_config(None, ["data.root=/x", f"train.channels_last={text}", "train.amp=off"])
    assert cfg.train.channels_last == expected and cfg.train.amp == "off"


def test_a_fixed_setting_with_wrong_gradients_is_kept_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(autotune, "cpu_has_native_bf16", lambda: True)
    model = build_classifier("x3d_xs", 3, clip_len=2, crop_size=32)
    wrong = {BF16: lambda g: g * 3.0, BF16_CL: lambda g: g * 2.0}
    fmt = choose_step_format(model, **{**ARGS, "amp_mode": "bf16"}, measure=_recorded([], wrong),
                             cache_file=tmp_path / "a.json")
    assert fmt == BF16_CL  # what the configuration asked for (bf16), the least wrong of its layouts
    assert "training may diverge" in caplog.text


def test_a_fixed_bf16_is_still_checked(tmp_path, monkeypatch, caplog):
    model = build_classifier("x3d_xs", 3, clip_len=2, crop_size=32)
    measured = []
    fmt = choose_step_format(model, **{**ARGS, "amp_mode": "bf16", "channels_last_mode": "off"},
                             measure=_recorded(measured, {BF16: lambda g: g * float("nan")}),
                             cache_file=tmp_path / "a.json")
    assert fmt == BF16 and measured == [FP32, BF16]  # kept as configured, measured against fp32
    assert "training may diverge" in caplog.text


FP16, FP16_CL = StepFormat(torch.float16, False), StepFormat(torch.float16, True)


def test_on_cuda_auto_means_the_gpu_dtype_in_both_layouts():
    assert candidates("auto", "auto", native_bf16=False, gpu_dtype=torch.bfloat16) == [BF16, BF16_CL]
    assert candidates("auto", "auto", native_bf16=True, gpu_dtype=torch.float16) == [FP16, FP16_CL]
    assert candidates("off", "auto", native_bf16=False, gpu_dtype=torch.bfloat16) == [FP32, FP32_CL]
    assert candidates("auto", "off", native_bf16=False, gpu_dtype=torch.bfloat16) == [BF16]


def _timed(seconds: dict, wrong: dict | None = None):
    """A measurement with set times and gradients (the choice rule alone; measure_step is tested above)."""
    measured, base = [], torch.linspace(1.0, 2.0, 50, dtype=torch.float64)

    def measure(model, fmt, **kw):
        measured.append(fmt)
        return Measurement(seconds[fmt], (wrong or {}).get(fmt, lambda g: g * 1.001)(base))
    return measure, measured


def test_on_cuda_the_layout_is_chosen_by_speed_and_a_refused_gpu_dtype_falls_back_to_fp32(tmp_path, caplog):
    """H200 figures (README, Running on GPUs): channels_last_3d 1.5x faster for R(2+1)D, 4.7x slower for X3D-S;
    bf16's first-step gradient 100% off fp32's for a random-initialised R(2+1)D-18."""
    caplog.set_level(logging.INFO, logger="videoft")
    model = build_classifier("x3d_xs", 3, clip_len=2, crop_size=32)
    cuda = dict(ARGS, gpu_dtype=torch.bfloat16, device="NVIDIA H200|cuDNN 91900")
    measure, measured = _timed({FP32: 1.0, BF16: 0.6, BF16_CL: 0.4})
    assert choose_step_format(model, **cuda, measure=measure, cache_file=tmp_path / "a.json") == BF16_CL
    assert measured == [FP32, BF16, BF16_CL]  # fp32 only as the gradient reference
    assert "NVIDIA H200|cuDNN 91900" in next(iter(json.loads((tmp_path / "a.json").read_text())))
    measure, _ = _timed({FP32: 1.0, BF16: 0.6, BF16_CL: 2.8})
    assert choose_step_format(model, **cuda, measure=measure, cache_file=tmp_path / "b.json") == BF16
    # bf16 refused in both layouts: fp32, which `auto` allows, not the least wrong bf16
    measure, _ = _timed({FP32: 1.0, BF16: 0.5, BF16_CL: 0.3}, {BF16: lambda g: g * 2.0, BF16_CL: lambda g: g * 2.0})
    assert choose_step_format(model, **cuda, measure=measure, cache_file=tmp_path / "c.json") == FP32
    assert caplog.text.count("(refused)") == 2 and "training may diverge" not in caplog.text
    # a fixed fp16 is checked with the same tolerance as bf16 (fp16 steps are not loss-scaled when timed)
    measure, _ = _timed({FP32: 1.0, FP16: 0.5})
    fixed = dict(cuda, amp_mode="fp16", channels_last_mode="off")
    assert choose_step_format(model, **fixed, measure=measure, cache_file=tmp_path / "d.json") == FP16
    assert "training may diverge" not in caplog.text
