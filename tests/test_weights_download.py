"""Downloading pretrained weights, against a local HTTP server (no test may reach the internet).

The server serves a real state dict of timm's tiny ``test_resnet`` under torchvision-style file
names (``<name>-<sha256 prefix>.pth``); ``pretrained.DOWNLOADS`` points the backbone's download at
it, exactly as a mirror would be configured.
"""

from __future__ import annotations

import hashlib
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from reidbench.models import pretrained
from reidbench.models.backbones import build_backbone
from reidbench.models.weights import (
    WeightsResolver,
    is_pending,
    weights_available,
    weights_identity,
    weights_plan,
)
from reidbench.models.weights_digest import state_dict_digest
from reidbench.models.weights_download import HubFile, UrlFile

BACKBONE = "timm:test_resnet"


@pytest.fixture(scope="module")
def weights() -> tuple[dict[str, torch.Tensor], bytes]:
    torch.manual_seed(7)
    backbone, _ = build_backbone(BACKBONE, pretrained=False)
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return state, buffer.getvalue()


class _Server:
    """Serves ``body`` at /full/<name> and half of it (then hangs up) at /cut/<name>; counts requests."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                if self.path.startswith("/cut/"):
                    self.wfile.write(server.body[: len(server.body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                else:
                    self.wfile.write(server.body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, kind: str, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{kind}/{name}"


@pytest.fixture
def server(weights):
    srv = _Server(weights[1])
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty torch hub / HF / reidbench caches, and downloads allowed (conftest forbids them)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("REIDBENCH_DATA", str(tmp_path / "reidbench"))
    monkeypatch.delenv("REIDBENCH_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _name(body: bytes, prefix: str | None = None) -> str:
    return f"test_resnet-{prefix or hashlib.sha256(body).hexdigest()[:8]}.pth"


def _serve(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setitem(pretrained.DOWNLOADS, BACKBONE, UrlFile(url))


def test_download_is_checked_cached_where_torch_hub_looks_and_not_repeated(weights, server, online, monkeypatch):
    state, body = weights
    name = _name(body)
    _serve(monkeypatch, server.url("full", name))

    backbone, _ = build_backbone(BACKBONE, pretrained=True)
    assert server.requests == [f"/full/{name}"]
    assert backbone.reid_info["pretrained_source"] == f"torch-hub-cache:{name}"
    assert backbone.reid_info["pretrained_digest"] == state_dict_digest(state)
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in state.items())
    assert sorted(p.name for p in online.iterdir()) == [name]  # no temporary file left beside it
    assert (online / name).read_bytes() == body

    # The cache hit: another load (and the run identity) makes no request.
    again, _ = build_backbone(BACKBONE, pretrained=True)
    assert weights_identity(BACKBONE, True) == again.reid_info["pretrained_digest"] == state_dict_digest(state)
    # torch hub (as torchvision and timm call it) finds the same file without a request either.
    hub_state = torch.hub.load_state_dict_from_url(server.url("full", name), check_hash=True, weights_only=True)
    assert all(torch.equal(hub_state[k], v) for k, v in state.items())
    assert len(server.requests) == 1


def test_a_bad_checksum_is_refused_and_nothing_is_cached(weights, server, online, monkeypatch):
    _serve(monkeypatch, server.url("full", _name(weights[1], prefix="00000000")))
    with pytest.raises(FileNotFoundError) as info:
        build_backbone(BACKBONE, pretrained=True)
    message = str(info.value)
    assert "\n" not in message and "refused" in message and "does not start with the published 00000000" in message
    assert "nothing was cached" in message and "model.weights_path=" in message
    assert not online.exists() or list(online.iterdir()) == []


def test_an_interrupted_transfer_leaves_nothing_in_the_cache(weights, server, online, monkeypatch):
    body = weights[1]
    _serve(monkeypatch, server.url("cut", _name(body)))
    with pytest.raises(FileNotFoundError) as info:
        weights_identity(BACKBONE, True)
    message = str(info.value)
    assert "\n" not in message
    assert f"interrupted ({len(body) // 2} of {len(body)} bytes)" in message and "nothing was cached" in message
    assert list(online.iterdir()) == []
    # Without a published checksum the length check alone must catch it.
    monkeypatch.setitem(pretrained.DOWNLOADS, BACKBONE, UrlFile(server.url("cut", "w.pth"), sha256_prefix=None))
    with pytest.raises(FileNotFoundError, match="interrupted"):
        weights_identity(BACKBONE, True)
    assert list(online.iterdir()) == []


@pytest.mark.parametrize("how", ["REIDBENCH_OFFLINE", "HF_HUB_OFFLINE", "argument"])
def test_offline_mode_makes_no_request_and_says_what_to_do(weights, server, online, monkeypatch, how):
    _serve(monkeypatch, server.url("full", _name(weights[1])))
    if how != "argument":
        monkeypatch.setenv(how, "1")
    with pytest.raises(FileNotFoundError) as info:
        weights_identity(BACKBONE, True, offline=True if how == "argument" else None)
    message = str(info.value)
    assert server.requests == []
    assert "\n" not in message and message.startswith(f"{BACKBONE} ImageNet weights not found")
    assert "offline mode" in message and "model.weights_path=" in message and "model.pretrained=false" in message
    assert weights_available(BACKBONE, offline=how == "argument") == message
    plan = weights_plan(BACKBONE, offline=how == "argument")
    assert plan[-1][0] == f"download:{server.url('full', _name(weights[1]))}" and plan[-1][1] is False
    assert server.requests == []


def test_a_dry_run_resolver_leaves_the_digest_pending_without_a_request(weights, server, online, monkeypatch):
    _serve(monkeypatch, server.url("full", _name(weights[1])))
    resolver = WeightsResolver(download=False)
    from reidbench.harness.spec import RunSpec, replace_section

    spec = replace_section(RunSpec(), "model", backbone=BACKBONE)
    assert is_pending(resolver(spec)) and BACKBONE in resolver.pending
    assert resolver(replace_section(spec, "model", pretrained=False)) is None
    assert weights_available(BACKBONE) is None  # downloadable: no problem to report
    assert server.requests == []
    plan = weights_plan(BACKBONE)
    assert plan[-1][1] is True and not any(available for _, available, _ in plan[:-1])  # not cached; may download


def test_hub_repos_download_through_huggingface_hub_into_its_cache(online, monkeypatch, weights, tmp_path):
    """timm's hub repos: huggingface_hub does the transfer (etag and size checks, its own cache)."""
    import huggingface_hub

    state = weights[0]
    calls = []

    def fake_download(repo_id: str, filename: str, cache_dir: str | None = None, **_: object) -> str:
        calls.append((repo_id, filename, cache_dir))
        from safetensors.torch import save_file

        target = tmp_path / "hf-file.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(target))
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setitem(pretrained.DOWNLOADS, BACKBONE, HubFile("timm/test_resnet.r160_in1k"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"HF_HUB_OFFLINE=1"):
        weights_identity(BACKBONE, True)
    assert calls == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    backbone, _ = build_backbone(BACKBONE, pretrained=True)
    assert calls == [("timm/test_resnet.r160_in1k", "model.safetensors", str(online.parent.parent.parent / "hf"))]
    assert backbone.reid_info["pretrained_source"] == "hf-cache:timm/test_resnet.r160_in1k/model.safetensors"
    # The same tensors as a .pth elsewhere: the same digest.
    assert backbone.reid_info["pretrained_digest"] == state_dict_digest(state)
