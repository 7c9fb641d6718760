"""Downloading ImageNet weights from where torchvision and timm publish them, into their caches.

Two kinds of published file, each written where its own library would write it, so that
torchvision and timm find the same file later (and reidbench finds theirs):

- ``UrlFile``: a plain URL (torchvision's weight enums, timm configs without a hub repo) →
  ``$TORCH_HOME/hub/checkpoints/<file name>``, torch hub's cache. torchvision's file names carry
  the first hex digits of the file's sha256 (``mobilenet_v2-b0353104.pth``); the download is
  checked against them. The body goes to a hidden temporary file beside the target, is checked
  (length announced by the server, sha256 prefix) and only then renamed into place: a failed,
  refused or interrupted transfer leaves nothing under the real name.
- ``HubFile``: a Hugging Face hub repo (timm's ``hf_hub_id``, e.g. ``timm/resnet50.tv_in1k``) →
  the Hugging Face cache through ``huggingface_hub.hf_hub_download``, which checks sizes and
  etags and keeps interrupted blobs as ``*.incomplete`` (its own convention; they never count as
  cached).

Nothing here decides *whether* to download (``models/pretrained.py`` does); ``offline_reason``
says when the network must not be touched: ``offline=True`` (the CLI's ``--offline``),
``REIDBENCH_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` (read at call time).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

OFFLINE_ENV = "REIDBENCH_OFFLINE"
HF_OFFLINE_ENV = "HF_HUB_OFFLINE"
# torch.hub's convention: "<name>-<sha256 prefix>.<ext>"
HASH_PREFIX = re.compile(r"-([a-f0-9]{6,64})\.")
CHUNK_BYTES = 1 << 20
# Seconds without a byte before a transfer is given up (connect and each read).
TIMEOUT_S = 60.0
HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub repos hold, in timm's order

__all__ = ["DownloadError", "HubFile", "UrlFile", "offline_reason", "torch_hub_checkpoints", "hf_cache_dir"]


class DownloadError(RuntimeError):
    """A download that failed or was refused; the message is one line and names the URL."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def offline_reason(offline: bool | None = None) -> str | None:
    """Why the network must not be used (``None``: downloads are allowed)."""
    if offline:
        return "offline mode (--offline)"
    if _truthy(os.environ.get(OFFLINE_ENV)):
        return f"offline mode ({OFFLINE_ENV}=1)"
    if _truthy(os.environ.get(HF_OFFLINE_ENV)):
        return f"offline mode ({HF_OFFLINE_ENV}=1)"
    return None


def torch_hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_cache_dir() -> str | None:
    # Read at call time (huggingface_hub freezes its own copy at import).
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


@dataclass(frozen=True)
class UrlFile:
    """A weights file published at a URL, cached in torch hub's checkpoints folder."""

    url: str
    # First hex digits of the file's sha256; "" = take them from the file name (torchvision's
    # convention), None = nothing published to check against.
    sha256_prefix: str | None = ""

    @property
    def filename(self) -> str:
        return Path(urlparse(self.url).path).name

    @property
    def expected_prefix(self) -> str | None:
        if self.sha256_prefix is None:
            return None
        if self.sha256_prefix:
            return self.sha256_prefix
        match = HASH_PREFIX.search(self.filename)
        return match.group(1) if match else None

    @property
    def source(self) -> str:
        """The source string recorded for the cached file (the same as any torch hub cache hit)."""
        return f"torch-hub-cache:{self.filename}"

    def cached(self) -> Path | None:
        file = torch_hub_checkpoints() / self.filename
        return file if file.is_file() else None

    def describe(self) -> str:
        return self.url

    @property
    def location(self) -> str:
        return self.url

    def download(self, progress: bool | None = None) -> Path:
        """Fetch into the cache (see the module doc); returns the cached file."""
        target = torch_hub_checkpoints() / self.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{self.filename}.", suffix=".partial",
                                             delete=False)
        try:
            with handle:
                received, digest = self._transfer(handle, progress)
            expected = self.expected_prefix
            if expected is not None and not digest.startswith(expected):
                raise DownloadError(f"download of {self.url} refused: its sha256 {digest[:16]}… does not start with "
                                    f"the published {expected}; nothing was cached")
            os.replace(handle.name, target)
        finally:
            if os.path.exists(handle.name):
                os.remove(handle.name)
        return target

    def _transfer(self, out, progress: bool | None) -> tuple[int, str]:
        from urllib.request import Request, urlopen

        from tqdm.auto import tqdm

        sha256 = hashlib.sha256()
        received = 0
        try:
            with urlopen(Request(self.url, headers={"User-Agent": "reidbench"}), timeout=TIMEOUT_S) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                # disable=None: a bar only on a terminal (logs and tests stay clean).
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=self.filename,
                          disable=None if progress is None else not progress, file=sys.stderr) as bar:
                    while True:
                        chunk = response.read(CHUNK_BYTES)
                        if not chunk:
                            break
                        out.write(chunk)
                        sha256.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        except DownloadError:
            raise
        except Exception as error:  # URLError, HTTPError, timeouts, resets: all one line
            raise DownloadError(f"download of {self.url} failed ({_one_line(error)}); nothing was cached") from None
        # http.client returns b"" when the connection closes early instead of raising: check the length.
        if total is not None and received != total:
            raise DownloadError(f"download of {self.url} was interrupted ({received} of {total} bytes); "
                                f"nothing was cached")
        return received, sha256.hexdigest()


@dataclass(frozen=True)
class HubFile:
    """A weights file in a Hugging Face hub repo (timm's ``hf_hub_id``), cached in the HF cache."""

    repo_id: str
    filenames: tuple[str, ...] = HF_FILENAMES

    @property
    def filename(self) -> str:
        return self.filenames[0]

    def _source(self, filename: str) -> str:
        return f"hf-cache:{self.repo_id}/{filename}"

    @property
    def source(self) -> str:
        return self._source(self.filename)

    def cached_entry(self) -> tuple[Path, str] | None:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        for filename in self.filenames:
            hit = try_to_load_from_cache(self.repo_id, filename, cache_dir=hf_cache_dir())
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit), self._source(filename)
        return None

    def cached(self) -> Path | None:
        entry = self.cached_entry()
        return entry[0] if entry else None

    def describe(self) -> str:
        return f"the Hugging Face hub repo {self.repo_id}"

    @property
    def location(self) -> str:
        return f"hf-hub:{self.repo_id}"

    def download(self, progress: bool | None = None) -> tuple[Path, str]:
        """Fetch the first file the repo has into the HF cache; returns (file, source)."""
        try:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError
        except ImportError:
            raise DownloadError(f"download from {self.describe()} needs huggingface_hub (pip install huggingface_hub)"
                                ) from None
        last: BaseException | None = None
        for filename in self.filenames:
            try:
                path = hf_hub_download(self.repo_id, filename, cache_dir=hf_cache_dir())
            except EntryNotFoundError as error:
                last = error
                continue
            except Exception as error:  # network, auth, offline: one line
                raise DownloadError(f"download from {self.describe()} failed ({_one_line(error)})") from None
            return Path(path), self._source(filename)
        raise DownloadError(f"download from {self.describe()} failed: it has none of {', '.join(self.filenames)} "
                            f"({_one_line(last) if last else 'no file'})")


Download = UrlFile | HubFile
