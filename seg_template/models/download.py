"""Library weights (torchvision, timm, smp's Hugging Face hub files) from their download caches: fetched once,
then read offline.

``model.pretrained=true`` (what the configs of real datasets ask for, through ``data.imagenet_pretrained``)
is best effort: with no cached copy and no network, one warning says how to pass a local file and the
model starts from scratch. A weight the user *named* (``IMAGENET1K_V2``, ``ms_in1k``) must be obtained:
failing that is a ``CheckpointError`` with the same advice.

Before a download we check that the host answers (a few seconds at most): offline, Hugging Face's client
would otherwise retry for most of a minute before failing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

import torch

from seg_template.errors import CheckpointError

log = logging.getLogger(__name__)

T = TypeVar("T")
PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether ``url``'s host accepts a connection within ``timeout`` s. Behind a proxy we cannot tell, so
    we answer True and let the download itself succeed or fail."""
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return True
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "", parsed.port or 443), timeout=timeout):
            return True
    except OSError:  # DNS failure, refused, unreachable network, timeout
        return False


def torchvision_cached(url: str) -> bool:
    """Whether torch.hub already holds the file of ``url`` (``$TORCH_HOME/hub/checkpoints/<name>``)."""
    return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)).is_file()


def timm_source(model_name: str) -> tuple[str, bool]:
    """Where timm fetches ``model_name``'s weights (``architecture.tag``) from, and whether they are cached."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    if cfg is None:  # timm resolves the default tag itself; we only know the architecture
        return "https://huggingface.co/timm", False
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        cached = any(isinstance(try_to_load_from_cache(cfg.hf_hub_id, f), str) for f in files)
        return f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/{files[0]}", cached
    return cfg.url, torchvision_cached(cfg.url)


def hub_source(repo_id: str, revision: str, files: tuple[str, ...] = ("config.json", "model.safetensors")) -> tuple[
        str, bool]:
    """Where the Hugging Face hub serves ``files`` of ``repo_id`` at ``revision`` (the URL of the last one, the
    weights), and whether all of them are in the hub's download cache already (segmentation_models_pytorch's
    encoder weights: ``smp-hub/<encoder>.<weights>``, a config and a safetensors file)."""
    from huggingface_hub import try_to_load_from_cache

    cached = all(isinstance(try_to_load_from_cache(repo_id, f, revision=revision), str) for f in files)
    return f"https://huggingface.co/{repo_id}/resolve/{revision}/{files[-1]}", cached


def fetch_weights(fetch: Callable[[], T], what: str, url: str, cached: bool, best_effort: bool) -> T | None:
    """``fetch()`` (which downloads into the library's cache on first use), or None when ``best_effort`` and
    the weights can be neither read from the cache nor downloaded (one warning line says what to do).

    ``what`` names the weights in messages, ``url`` is where they come from (its host is probed first unless
    ``cached``). Without ``best_effort`` the failure is a ``CheckpointError``. With ``HF_HUB_OFFLINE=1``
    timm fails at once on an uncached file, which lands here as any download failure.
    """
    advice = f"download {url} on a machine with network and pass model.pretrained=<that file>"
    if not cached and not host_reachable(url):
        failure = f"are not in the download cache and {urlparse(url).hostname} cannot be reached (offline?)"
    else:
        try:
            return fetch()
        except OSError as err:  # URLError, connection errors, Hugging Face's LocalEntryNotFoundError
            failure = f"could not be downloaded ({type(err).__name__}: {str(err).splitlines()[0][:160]})"
    if not best_effort:
        raise CheckpointError(f"model.pretrained: {what} {failure}. To use them, {advice} "
                              f"(or model.pretrained=null to train from scratch).")
    # true, default and imagenet all ask for the library's default ImageNet weights, at best effort
    log.warning("model.pretrained=true (or default / imagenet): %s %s: training from scratch. To start from them, "
                "%s.", what, failure,
                advice)
    return None
