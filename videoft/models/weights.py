"""Read Kinetics checkpoints (hub URL, any URL, local file) and load them strictly into a library model."""
from __future__ import annotations

import hashlib
import http.client
import logging
import pickle
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from videoft.errors import WeightsError

log = logging.getLogger(__name__)

WEIGHTS_FORMATS = ("pytorchvideo", "torchvision")
_URL_SCHEMES = ("http", "https", "ftp", "file")
_MAX_KEYS_SHOWN = 8
_warned: set[str] = set()  # sources already warned about, so the fallback warning appears once per process


class WeightsUnavailableError(WeightsError):
    """Pretrained weights could not be fetched (no network, HTTP error, missing file)."""


def is_url(source: str) -> bool:
    """True for http(s)/ftp/file URLs; False for plain paths (including Windows drive letters)."""
    return urllib.parse.urlparse(source).scheme.lower() in _URL_SCHEMES


def hash_prefix_in_name(url: str) -> str | None:
    """The sha256 prefix a file name declares in torch.hub's `name-<hex>.ext` convention, else None."""
    match = torch.hub.HASH_REGEX.search(Path(urllib.parse.urlparse(url).path).name)
    return (match.group(1) or None) if match else None


def read_checkpoint(source: str, *, model_dir: str | None = None, check_hash: bool = True) -> Any:
    """Read a checkpoint from a URL (through torch.hub's cache) or a local path, tensors only.

    With check_hash, a URL whose file name follows torch.hub's `name-<sha256 prefix>.ext`
    convention must match that hash. `file://` URLs are read in place (hash checked the same way)
    rather than copied into the hub cache: the cache is keyed by file name only, so a retrained
    file at the same path would otherwise be shadowed by a stale copy. Plain paths are not hashed.
    Raises WeightsUnavailableError when the source cannot be reached or does not exist.
    """
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme.lower() == "file" or not is_url(source):
        path = (Path(urllib.request.url2pathname(parsed.path)) if is_url(source)
                else Path(source).expanduser())
        if not path.is_file():
            raise WeightsUnavailableError(f"weights file not found: {path} (from {source!r})")
        expected = hash_prefix_in_name(source) if check_hash and is_url(source) else None
        if expected is not None:
            digest = _sha256(path)
            if not digest.startswith(expected):
                raise WeightsError(f"{source}: invalid hash value (expected {expected!r} from the file "
                                   f"name, got {digest[:len(expected)]!r}); the file is corrupt or misnamed")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise _refused(source, e) from e
    try:
        return torch.hub.load_state_dict_from_url(
            source, model_dir=model_dir, progress=True, check_hash=check_hash,
            map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refused(source, e) from e
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
        cache = Path(model_dir or Path(torch.hub.get_dir()) / "checkpoints") / Path(parsed.path).name
        raise WeightsUnavailableError(
            f"could not download pretrained weights from {source} ({e}). Without network access, "
            f"download the file elsewhere and pass model.weights=/path/to/file.pyth instead, "
            f"or copy it to {cache}") from e
    except RuntimeError as e:
        if "invalid hash value" in str(e):
            raise WeightsError(f"{source}: the file's sha256 does not match the hash prefix in its name "
                               f"({str(e).strip().splitlines()[0]}); the download is corrupt or the URL is wrong",
                               remedy="delete the file from the download cache and run again") from e
        raise


def unwrap_state_dict(checkpoint: Any, weights_format: str, source: str) -> Mapping[str, torch.Tensor]:
    """The model state dict inside a checkpoint of the given library format."""
    if weights_format not in WEIGHTS_FORMATS:
        raise ValueError(f"weights_format={weights_format!r}; allowed: {WEIGHTS_FORMATS}")
    if not isinstance(checkpoint, Mapping):
        raise WeightsError(f"{source}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    if weights_format == "pytorchvideo":
        if "model_state" not in checkpoint:
            raise WeightsError(
                f"{source}: a pytorchvideo checkpoint is {{'model_state': state_dict}}; this one has keys "
                f"{_shorten(list(checkpoint))} (a videoft checkpoint goes to init_from, not weights)")
        checkpoint = checkpoint["model_state"]
    bad = [k for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{source}: not a plain state dict ({weights_format} format); "
                         f"non-tensor entries {_shorten(bad)}")
    return checkpoint


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load every key with its exact shape, or raise ValueError listing what does not match."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or shapes:
        raise WeightsError(
            f"weights from {source} do not match the {type(model).__name__} architecture: "
            f"{len(missing)} missing keys {_shorten(missing)}, {len(unexpected)} unexpected keys "
            f"{_shorten(unexpected)}, {len(shapes)} shape mismatches {_shorten(shapes)}")
    model.load_state_dict(state_dict, strict=True)


def warn_random_init(source: str, error: Exception) -> None:
    """Say loudly, once per source, that training continues from random weights."""
    if source in _warned:
        return
    _warned.add(source)
    log.warning("!" * 72 + "\nPRETRAINED WEIGHTS UNAVAILABLE: %s\nContinuing with RANDOM initialisation "
                "(on_missing_weights='random'); accuracy will be far below a pretrained start.\n"
                + "!" * 72, error)


def _refused(source: str, error: Exception) -> WeightsError:
    return WeightsError(f"{source}: torch.load(weights_only=True) refuses this file (it holds more than "
                      f"tensors and plain containers, or is not a torch checkpoint): {error}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _shorten(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_KEYS_SHOWN])
    return f"[{shown}{', ...' if len(items) > _MAX_KEYS_SHOWN else ''}]"
