"""Issue #11 as a user meets it: each mistake gives one line `error: ...` and exit code 2 from the tool
(never a Python traceback), before anything heavy starts; a run whose typed options override the
config file trains, with a notice; progress written to a file is a few lines, not redraws."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_TRAIN_OVERRIDES
from videoft.models.backbones import get_backbone_spec

from .tool_helpers import REPO, load_tool

TRAIN = [sys.executable, str(REPO / "tools" / "train.py")]
DEMO = str(REPO / "configs" / "demo.yaml")


def run_tool(args: list[str], env: dict, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def train(data: Path, out: Path, *extra: str, env: dict, config: str = DEMO) -> subprocess.CompletedProcess:
    return run_tool(TRAIN + [config, f"data.root={data}", f"out_dir={out}", *TINY_TRAIN_OVERRIDES, *extra], env)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The tool's last stderr line, checked to be its only error output (no traceback above it)."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def x3d_xs_weights(tmp_path_factory) -> Path:
    """A pytorchvideo-format X3D-XS checkpoint ({"model_state": ...}), random weights."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "X3D_XS.pyth"
    torch.save({"model_state": get_backbone_spec("x3d_xs").builder().state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, tiny_motion_dataset, subprocess_env) -> Path:
    """A one-step run: its last.pt is resumed from and started from below."""
    out = tmp_path_factory.mktemp("short") / "run"
    proc = train(tiny_motion_dataset, out, "train.epochs=1", "train.max_steps_per_epoch=1", env=subprocess_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


# ---------------------------------------------------------------------------- 1. weights

def test_unreachable_weights_are_one_line(tmp_path, tiny_motion_dataset, subprocess_env):
    url = "http://127.0.0.1:9/X3D_XS.pyth"  # the discard port: refused at once, as offline
    proc = train(tiny_motion_dataset, tmp_path / "run", f"model.weights={url}", env=subprocess_env)
    assert proc.returncode == 2
    line = error_line(proc)
    assert line.startswith(f"error: could not download pretrained weights from {url} (")
    assert line.endswith("Without network access, download the file elsewhere and pass "
                         "model.weights=/path/to/file.pyth instead, or copy it to "
                         f"{Path(torch.hub.get_dir()) / 'checkpoints' / 'X3D_XS.pyth'}")


def test_a_hash_mismatch_is_one_line(tmp_path, tiny_motion_dataset, x3d_xs_weights, subprocess_env):
    misnamed = shutil.copy(x3d_xs_weights, tmp_path / "x3d_xs-deadbeef.pyth")
    proc = train(tiny_motion_dataset, tmp_path / "run", f"model.weights={Path(misnamed).as_uri()}",
                 env=subprocess_env)
    assert proc.returncode == 2
    assert error_line(proc).startswith(f"error: {Path(misnamed).as_uri()}: invalid hash value (expected "
                                       "'deadbeef' from the file name, got '")


def test_init_from_a_run_of_another_backbone_is_one_line(tmp_path, tiny_motion_dataset, short_run, subprocess_env):
    proc = train(tiny_motion_dataset, tmp_path / "run", "model.backbone=r3d_18",
                 f"model.init_from={short_run / 'last.pt'}", env=subprocess_env)
    assert proc.returncode == 2
    assert error_line(proc) == (f"error: model.init_from {short_run / 'last.pt'}: its backbone is x3d_xs, this run "
                                "builds r3d_18 (set model.backbone=x3d_xs)")


# ---------------------------------------------------------------------------- 2. the command line wins

def test_weights_typed_over_a_pretrained_config_train_with_a_notice(tmp_path, tiny_motion_dataset, x3d_xs_weights,
                                                                   subprocess_env):
    """Also issue #11 case 9: with stderr/stdout not a terminal, progress is a periodic line (here every
    step, VIDEOFT_PROGRESS_SECONDS=0), never a bar's carriage-return redraws."""
    config = tmp_path / "pretrained.yaml"
    config.write_text(Path(DEMO).read_text().replace("pretrained: null", "pretrained: kinetics400"))
    proc = train(tiny_motion_dataset, tmp_path / "run", f"model.weights={x3d_xs_weights}", "train.epochs=1",
                 "train.max_steps_per_epoch=2", "train.precise_bn_batches=0", config=str(config),
                 env={**subprocess_env, "VIDEOFT_PROGRESS_SECONDS": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (f"model.weights={x3d_xs_weights} (command line) replaces model.pretrained=kinetics400 from {config}"
            in proc.stderr.splitlines())
    assert "\r" not in proc.stdout + proc.stderr
    assert " INFO epoch 1/1: 1/3 (33%) | " in proc.stdout and " INFO validate: 1/" in proc.stdout


# ---------------------------------------------------------------------------- 3. not a videoft checkpoint

@pytest.fixture(scope="module")
def foreign_checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("foreign")
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}, "optimizer": {}, "epoch": 3}, root / "common.pt")
    torch.save({"fc.weight": torch.zeros(2, 2)}, root / "bare.pt")
    return {"common": root / "common.pt", "bare": root / "bare.pt"}


@pytest.mark.parametrize("kind, keys", [("common", "['epoch', 'model', 'optimizer']"), ("bare", "['fc.weight']")])
@pytest.mark.parametrize("tool", ["infer", "evaluate", "export"])
def test_a_checkpoint_of_another_program_is_one_line(foreign_checkpoints, eval_data, tool, kind, keys, capsys):
    path = foreign_checkpoints[kind]
    args = {"infer": [str(path), str(next(eval_data.rglob("*.mp4")))],
            "evaluate": [str(path), "--data", str(eval_data)],
            "export": [str(path), "--format", "torchscript"]}[tool]
    assert load_tool(tool).main(args) == 2
    assert capsys.readouterr().err == (
        f"error: {path}: not a videoft checkpoint (no 'format' key; keys: {keys}); give a best.pt or last.pt "
        "written by tools/train.py (backbone weights go to model.weights, another videoft run to "
        "model.init_from)\n")


def test_the_exit_code_reaches_the_shell(foreign_checkpoints, eval_data, subprocess_env):
    proc = run_tool([sys.executable, str(REPO / "tools" / "infer.py"), str(foreign_checkpoints["common"]),
                     str(next(eval_data.rglob("*.mp4")))], subprocess_env)
    assert proc.returncode == 2
    assert error_line(proc).startswith(f"error: {foreign_checkpoints['common']}: not a videoft checkpoint")


# ---------------------------------------------------------------------------- 4, 5, 6, 7: config and data

def test_config_mistakes_are_listed_together_before_any_import_of_a_model(tmp_path, tiny_motion_dataset,
                                                                          subprocess_env):
    proc = train(tiny_motion_dataset, tmp_path / "run", "train.eval_every=0", "optim.layer_decay=1.5",
                 "model.dropout=1.0", "data.crop_size=64", env=subprocess_env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-5:] == [
        "error: invalid configuration:",
        "  - model.dropout: 1.0 is out of range (allowed: [0, 1))",
        "  - optim.layer_decay: 1.5 is out of range (allowed: (0, 1])",
        "  - train.eval_every: 0 is out of range (allowed: >= 1)",
        "  - data.crop_size 64 is larger than the frames it is cut from (data.short_side 40 x data.scale_jitter low "
        "1.0): lower the crop or raise the short side"]
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_one_class_dataset_is_refused(tmp_path, make_class_folder, subprocess_env):
    data = make_class_folder(tmp_path / "data", {"diving": 4})
    proc = train(data, tmp_path / "run", env=subprocess_env)
    assert proc.returncode == 2
    assert error_line(proc) == (f"error: data.root {data} has 1 class (diving): a classifier needs at least two "
                                "(data.root is the folder that holds one folder per class)")


def test_a_dataset_of_unreadable_files_stops_in_one_line_from_a_worker(tmp_path, subprocess_env):
    data = tmp_path / "data"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
        for i in range(4):
            (data / name / f"{name}{i}.mp4").write_text("not a video")
    proc = train(data, tmp_path / "run", "data.num_workers=1", "data.val_fraction=0", env=subprocess_env)
    assert proc.returncode == 2
    line = error_line(proc)
    assert line.startswith("error: 21 videos in a row failed to decode (last: ") and "not a readable video" in line
    assert line.endswith("Most files seem unreadable: run tools/audit.py on the data, or set data.audit=true to "
                         "leave unreadable files out")


def test_a_resume_with_another_optimizer_is_refused(short_run, tiny_motion_dataset, subprocess_env):
    before = (short_run / "config.yaml").read_text()
    proc = run_tool(TRAIN + [DEMO, f"data.root={tiny_motion_dataset}", f"out_dir={short_run}", *TINY_TRAIN_OVERRIDES,
                             "--resume", "train.epochs=2", "optim.name=sgd"], subprocess_env)
    assert proc.returncode == 2
    assert error_line(proc) == (f"error: cannot resume from {short_run / 'last.pt'}: optim.name: checkpoint has "
                                "'adamw', config has 'sgd'. Start a new run (another out_dir), or use "
                                "model.init_from to fine-tune from it")
    assert (short_run / "config.yaml").read_text() == before


# ---------------------------------------------------------------------------- 8. OS-level reasons

def test_a_symlink_loop_is_named_as_one(tmp_path, controlled_checkpoint, subprocess_env):
    (tmp_path / "loop.mp4").symlink_to("loop.mp4")
    proc = run_tool([sys.executable, str(REPO / "tools" / "infer.py"), str(controlled_checkpoint),
                     str(tmp_path / "loop.mp4")], subprocess_env)
    assert proc.returncode == 1  # a bad video among the inputs (not a usage error)
    assert error_line(proc) == (f"error: {tmp_path / 'loop.mp4'}: symbolic link loop (following its links never "
                                "reaches a file)")


# ---------------------------------------------------------------------------- the machine and the paths

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device, message", [
    ("cuda", "error: --device cuda: no CUDA device is available here; use --device cpu\n"),
    ("gpu", "error: --device 'gpu' is not a device (cpu, cuda, cuda:N)\n"),
])
@pytest.mark.parametrize("tool", ["infer", "evaluate"])
def test_a_device_this_machine_lacks_is_one_line(controlled_checkpoint, eval_data, tool, device, message, capsys):
    args = {"infer": [str(controlled_checkpoint), str(next(eval_data.rglob("*.mp4")))],
            "evaluate": [str(controlled_checkpoint), "--data", str(eval_data)]}[tool]
    assert load_tool(tool).main([*args, "--device", device]) == 2
    assert capsys.readouterr().err == message


def test_an_out_dir_that_cannot_be_created_is_one_line(tmp_path, tiny_motion_dataset, subprocess_env):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = train(tiny_motion_dataset, blocker / "run", env=subprocess_env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-2:] == ["error: invalid configuration:",
                                             f"  - out_dir: {blocker / 'run'} cannot be created (Not a directory)"]
