"""Hugging Face ids at the command line: requests that give up, and a refusal at once, not
after a wait, of an id the hub cannot serve and the cache does not hold."""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlsplit

from ..errors import UnsupportedModelError

HUB_TIMEOUT_S = 5
"""Seconds a request to the Hugging Face hub may wait (``HF_HUB_ETAG_TIMEOUT`` and
``HF_HUB_DOWNLOAD_TIMEOUT``, unless set)."""

HUB_PROBE_TIMEOUT_S = 3
"""At most how long finding out whether the hub answers takes (name lookup and connect)."""

_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def prepare_hub() -> str | None:
    """Make hub requests give up after `HUB_TIMEOUT_S`, and go offline when the hub does not
    answer; returns why the hub is out of reach (None: it may be used). Sets environment
    variables, so it must run before ``huggingface_hub`` is imported."""
    for variable in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):
        os.environ.setdefault(variable, str(HUB_TIMEOUT_S))
    offline = next((v for v in _OFFLINE_VARIABLES if _is_true(os.environ.get(v))), None)
    if offline is not None:
        return f"{offline} is set"
    if any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return None  # the proxy decides; the request timeouts bound the wait
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    if reachable(endpoint, HUB_PROBE_TIMEOUT_S):
        return None
    os.environ["HF_HUB_OFFLINE"] = "1"  # use the cache, without waiting on the network
    return f"{endpoint} is unreachable"


def check_cached(model: str, why_offline: str) -> None:
    """Refuse, at once, a hub id whose files are not in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(model, "config.json")
    except HFValidationError:
        raise UnsupportedModelError(
            f"{model!r} is no local path, .gguf file or Hugging Face model id"
        ) from None
    if not isinstance(cached, str):
        raise UnsupportedModelError(
            f"{model!r} is not a local path and not in the Hugging Face cache, and the hub "
            f"cannot be used ({why_offline})"
        )


def reachable(url: str, timeout: float) -> bool:
    """Whether a TCP connection to `url`'s host opens within `timeout` seconds (name lookup
    included: it runs in a thread that is abandoned when it takes too long)."""
    parts = urlsplit(url)
    if not parts.hostname:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    opened = threading.Event()

    def connect() -> None:
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
            opened.set()
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return opened.is_set()


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")
