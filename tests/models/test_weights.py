"""Pretrained weights: official formats, strict loading, hash check, offline errors (no real downloads)."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import logging
import shutil
import threading

import pytest
import torch

from videoft.errors import WeightsError
from videoft.models.backbones import WeightsUnavailableError, build_backbone, get_backbone_spec
from videoft.models.classifier import build_classifier

UNREACHABLE = "http://127.0.0.1:9/X3D_XS.pyth"  # the discard port: connection refused, at once


def assert_loaded(backbone: torch.nn.Module, state: dict[str, torch.Tensor], head: str) -> None:
    """Every backbone tensor equals the checkpoint's; only the head's keys are gone."""
    got = backbone.state_dict()
    assert set(state) - set(got) == {f"{head}.weight", f"{head}.bias"}
    for key, value in got.items():
        assert torch.equal(value, state[key]), key


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_dir(tmp_path):
    """(folder, base URL): a local HTTP server over a folder, to exercise torch.hub's real download path."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file-url"])
def test_pytorchvideo_checkpoint_loads(x3d_xs_file, as_url):
    path, state = x3d_xs_file
    backbone, dim = build_backbone(get_backbone_spec("x3d_xs"), weights=path.as_uri() if as_url else str(path))
    assert dim == 2048
    assert_loaded(backbone, state, "blocks.5.proj")


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file-url"])
def test_torchvision_checkpoint_loads(r3d_18_file, as_url):
    path, state = r3d_18_file
    backbone, dim = build_backbone(get_backbone_spec("r3d_18"), weights=path.as_uri() if as_url else str(path))
    assert dim == 512
    assert_loaded(backbone, state, "fc")


def test_kinetics400_downloads_through_torch_hub(r3d_18_file, http_dir, tmp_path):
    """pretrained="kinetics400" fetches spec.weights_url with torch.hub (hash checked, cached in model_dir)."""
    path, state = r3d_18_file
    folder, base = http_dir
    name = f"r3d_18-{sha256(path)[:8]}.pth"
    shutil.copy(path, folder / name)
    spec = dataclasses.replace(get_backbone_spec("r3d_18"), weights_url=f"{base}/{name}",
                               weights_sha256=sha256(path)[:8])
    backbone, _ = build_backbone(spec, pretrained="kinetics400", model_dir=str(tmp_path / "hub"))
    assert_loaded(backbone, state, "fc")
    assert (tmp_path / "hub" / name).is_file()


def test_wrong_hash_in_file_name_raises(x3d_xs_file, http_dir, tmp_path):
    path, _ = x3d_xs_file
    folder, base = http_dir
    shutil.copy(path, folder / "x3d_xs-deadbeef.pyth")
    shutil.copy(path, tmp_path / "x3d_xs-deadbeef.pyth")
    spec = get_backbone_spec("x3d_xs")
    for source in (f"{base}/x3d_xs-deadbeef.pyth", (tmp_path / "x3d_xs-deadbeef.pyth").as_uri()):
        # A corrupt file is not a missing one: on_missing_weights="random" does not hide it.
        with pytest.raises(WeightsError, match="hash") as info:
            build_backbone(spec, weights=source, on_missing_weights="random", model_dir=str(tmp_path / "hub"))
        assert not isinstance(info.value, WeightsUnavailableError)
    assert not (tmp_path / "hub" / "x3d_xs-deadbeef.pyth").exists()  # torch.hub keeps no corrupt copy


def test_mismatching_checkpoint_lists_keys(x3d_xs_file, tmp_path):
    _, state = x3d_xs_file
    bad = dict(state)
    del bad["blocks.1.res_blocks.0.branch1_conv.weight"]
    bad["blocks.9.extra.weight"] = torch.zeros(1)
    torch.save({"model_state": bad}, tmp_path / "bad.pyth")
    with pytest.raises(ValueError, match=r"1 missing keys \[blocks.1.res_blocks.0.branch1_conv.weight\], "
                                         r"1 unexpected keys \[blocks.9.extra.weight\]"):
        build_backbone(get_backbone_spec("x3d_xs"), weights=str(tmp_path / "bad.pyth"))


def test_shape_mismatch_raises(r3d_18_file):
    """mc3_18 has the same keys as r3d_18 but 2D convolutions in layers 2-4."""
    with pytest.raises(ValueError, match=r"0 missing keys.*0 unexpected keys.*shape mismatches \[layer2"):
        build_backbone(get_backbone_spec("mc3_18"), weights=str(r3d_18_file[0]))


def test_wrong_format_raises(x3d_xs_file, r3d_18_file, tmp_path):
    torch.save(x3d_xs_file[1], tmp_path / "plain.pth")
    with pytest.raises(ValueError, match="model_state"):
        build_backbone(get_backbone_spec("x3d_xs"), weights=str(tmp_path / "plain.pth"))
    torch.save({"model_state": r3d_18_file[1]}, tmp_path / "wrapped.pth")
    with pytest.raises(ValueError, match="not a plain state dict"):
        build_backbone(get_backbone_spec("r3d_18"), weights=str(tmp_path / "wrapped.pth"))


def test_non_tensor_checkpoint_is_refused(tmp_path):
    torch.save({"model_state": {}, "cfg": object()}, tmp_path / "pickled.pyth")
    (tmp_path / "text.pyth").write_text("not a checkpoint")
    for name in ("pickled.pyth", "text.pyth"):
        with pytest.raises(ValueError, match="weights_only=True"):
            build_backbone(get_backbone_spec("x3d_xs"), weights=str(tmp_path / name))


def test_offline_download_names_url_and_the_way_out(tmp_path):
    spec = dataclasses.replace(get_backbone_spec("x3d_xs"), weights_url=UNREACHABLE)
    with pytest.raises(WeightsUnavailableError, match=r"http://127\.0\.0\.1:9/X3D_XS\.pyth.*model\.weights="):
        build_backbone(spec, pretrained="kinetics400", model_dir=str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="127.0.0.1:9/other.pth"):
        build_backbone(spec, weights="http://127.0.0.1:9/other.pth", model_dir=str(tmp_path))


def test_offline_random_fallback_warns_once(tmp_path, caplog):
    url = "http://127.0.0.1:9/fallback-test.pyth"
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            model = build_classifier("x3d_xs", 3, weights=url, on_missing_weights="random",
                                     model_dir=str(tmp_path))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "RANDOM" in r.getMessage()]
    assert len(warnings) == 1 and url in warnings[0].getMessage()
    assert model(torch.randn(1, 3, 4, 32, 32)).shape == (1, 3)


def test_missing_local_file(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="not found"):
        build_backbone(get_backbone_spec("x3d_xs"), weights=str(tmp_path / "nope.pyth"))
    build_backbone(get_backbone_spec("x3d_xs"), weights=str(tmp_path / "nope.pyth"), on_missing_weights="random")


@pytest.mark.parametrize("kwargs, match", [
    (dict(pretrained="imagenet"), "pretrained='imagenet'.*kinetics400"),
    (dict(pretrained="kinetics400", weights="a.pth"), "not both"),
    (dict(weights="a.pth", on_missing_weights="skip"), "on_missing_weights='skip'.*'error', 'random'"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_backbone(get_backbone_spec("x3d_xs"), **kwargs)
