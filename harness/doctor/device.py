"""torch, CUDA and cuDNN versions, the GPUs, and a tiny training step with AMP and channels_last.

reidbench uses autocast on CUDA only (harness/train/build.py: ``train.amp`` is ignored on CPU,
which trains in float32); channels_last applies on every device. The probe below is the same kind
of step a run takes — conv, BatchNorm, ReLU, pooling, linear, a loss, backward — on a 2×3×32×16
batch, so it costs milliseconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from reidbench.harness.doctor.record import FAIL, OK, WARN, Check

GIB = 1024 ** 3
# channels_last changes the order of float32 sums inside the convolution kernels only.
CHANNELS_LAST_TOLERANCE = 1e-4
TIMED_STEPS = 3  # the fastest is shown


def cudnn_text(version: int | None) -> str:
    """cuDNN's integer version as text: 8902 → 8.9.2 (cuDNN 8), 92400 → 9.24.0 (cuDNN ≥ 9)."""
    if not version:
        return "none"
    if version >= 90000:
        return f"{version // 10000}.{version % 10000 // 100}.{version % 100}"
    return f"{version // 1000}.{version % 1000 // 100}.{version % 100}"


def torch_check() -> Check:
    import torch
    import torchvision

    cuda = torch.version.cuda
    try:
        cudnn = cudnn_text(torch.backends.cudnn.version()) if cuda else "none"
    except Exception:  # noqa: BLE001 - a broken cuDNN install is reported, not raised
        cudnn = "not loadable"
    try:
        import timm

        timm_text = f", timm {timm.__version__}"
    except ImportError:
        timm_text = ""
    build = f"CUDA {cuda}, cuDNN {cudnn}" if cuda else "CPU-only build"
    return Check("torch", OK, f"{torch.__version__} ({build}); torchvision {torchvision.__version__}{timm_text}",
                 {"torch": torch.__version__, "cuda": cuda, "cudnn": cudnn, "torchvision": torchvision.__version__})


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_gib: float
    capability: tuple[int, int]


def list_gpus() -> list[Gpu]:
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        out.append(Gpu(index, props.name, props.total_memory / GIB, (props.major, props.minor)))
    return out


def gpu_check(gpus: list[Gpu], torch_cuda: str | None) -> Check:
    """``gpus`` from :func:`list_gpus`; ``torch_cuda`` is ``torch.version.cuda`` (None: CPU-only build)."""
    if gpus:
        names = {(g.name, round(g.memory_gib, 1)) for g in gpus}
        if len(names) == 1:
            name, memory = next(iter(names))
            text = f"{len(gpus)} × {name} ({memory:.1f} GiB{' each' if len(gpus) > 1 else ''})"
        else:
            text = "; ".join(f"{g.index}: {g.name} ({g.memory_gib:.1f} GiB)" for g in gpus)
        return Check("GPU", OK, text + "; default profile: paper",
                     {"gpus": [{"index": g.index, "name": g.name, "memory_gib": round(g.memory_gib, 2),
                                "capability": list(g.capability)} for g in gpus]})
    if torch_cuda:
        return Check("GPU", WARN, f"none visible although torch is built for CUDA {torch_cuda}: check nvidia-smi "
                                  "(driver) and CUDA_VISIBLE_DEVICES; until then runs use the CPU (cpu profile)",
                     {"gpus": []})
    return Check("GPU", WARN, "none: this torch is a CPU-only build; runs use the CPU (cpu profile). For a GPU "
                              "install a CUDA build of torch (https://pytorch.org/get-started/locally/)", {"gpus": []})


# ------------------------------------------------------------------------------------ probes

@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    ms: float
    detail: str = ""  # why it failed, or what was checked


def _tiny_net() -> Any:
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _step(device: Any, amp_dtype: Any, channels_last: bool) -> tuple[Any, Any, Any]:
    """One forward + backward of the tiny net from seed 0: (logits, conv1 weight grad, logits dtype)."""
    import torch

    torch.manual_seed(0)
    net = _tiny_net().to(device)
    images = torch.randn(2, 3, 32, 16, device=device)
    labels = torch.tensor([0, 3], device=device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if amp_dtype is not None:
        with torch.autocast(device_type=device.type, dtype=amp_dtype):
            logits = net(images)
    else:
        logits = net(images)
    loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    loss.backward()
    return logits.detach().float(), net[0].weight.grad.detach().float(), logits.dtype


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe_step(device: str, amp_dtype: Any = None, channels_last: bool = False) -> ProbeResult:
    """Run the tiny step on ``device`` with autocast to ``amp_dtype`` (None: float32) and/or channels_last.

    ok when the step runs, its outputs and gradients are finite, autocast really produced
    ``amp_dtype`` outputs, and a channels_last step (float32) equals the plain NCHW step.
    """
    import torch

    dev = torch.device(device)
    threads = torch.get_num_threads()
    if dev.type == "cpu":  # a 2-image step gains nothing from threads, and on a busy machine OpenMP's spinning
        torch.set_num_threads(1)  # threads made it ×100 slower (2 ms → 380 ms on a loaded 2-core VM)
    try:
        return _probe(dev, amp_dtype, channels_last)
    finally:
        torch.set_num_threads(threads)


def _probe(dev: Any, amp_dtype: Any, channels_last: bool) -> ProbeResult:
    import torch

    try:
        _step(dev, amp_dtype, channels_last)  # warm-up: kernel selection and lazy initialisation
        times_ms = []
        for _ in range(TIMED_STEPS):
            _sync(dev)
            start = time.perf_counter()
            logits, grad, dtype = _step(dev, amp_dtype, channels_last)
            _sync(dev)
            times_ms.append((time.perf_counter() - start) * 1000)
        ms = min(times_ms)
    except Exception as err:  # noqa: BLE001 - any failure is the answer
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return ProbeResult(False, 0.0, f"{type(err).__name__}: {first}"[:200])
    if not (torch.isfinite(logits).all() and torch.isfinite(grad).all()):
        return ProbeResult(False, ms, "non-finite outputs or gradients")
    if amp_dtype is not None and dtype != amp_dtype:
        return ProbeResult(False, ms, f"autocast gave {dtype}, not {amp_dtype}")
    if channels_last and amp_dtype is None:
        ref_logits, ref_grad, _ = _step(dev, None, False)
        diff = max((logits - ref_logits).abs().max().item(), (grad - ref_grad).abs().max().item())
        if diff > CHANNELS_LAST_TOLERANCE:
            return ProbeResult(False, ms, f"differs from NCHW by {diff:.2g}")
    return ProbeResult(True, ms)


def bf16_native() -> bool:
    """bf16 in hardware (Ampere and later), not torch's emulation on older GPUs (slow)."""
    import torch

    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.3: no emulation, the plain answer is the native one
        return bool(torch.cuda.is_bf16_supported())


def amp_check(device: str, bf16_is_native: bool | None = None) -> Check:
    """bf16 (reidbench's default ``train.amp``) and fp16 autocast steps on ``device``.

    On CPU: a plain statement, since reidbench does not autocast there. ``bf16_is_native``: from
    :func:`bf16_native` when None.
    """
    import torch

    if not device.startswith("cuda"):
        return Check("AMP", WARN, "CUDA only in reidbench: without a GPU, runs train in float32 and train.amp "
                                  "is ignored (nothing to do)", {"device": device, "bf16": None, "fp16": None})
    native = bf16_native() if bf16_is_native is None else bf16_is_native
    bf16 = probe_step(device, torch.bfloat16, channels_last=True)  # with channels_last, as a run trains
    fp16 = probe_step(device, torch.float16, channels_last=True)
    data = {"device": device, "bf16": bf16.ok, "bf16_native": native, "fp16": fp16.ok,
            "bf16_ms": round(bf16.ms, 2), "fp16_ms": round(fp16.ms, 2)}
    if bf16.ok and fp16.ok and native:
        return Check("AMP", OK, f"bf16 and fp16 forward+backward on {device} ({bf16.ms:.1f} ms, {fp16.ms:.1f} ms)",
                     data)
    if bf16.ok and fp16.ok:
        return Check("AMP", WARN, f"bf16 runs on {device} but is emulated, not native (slow): set train.amp: fp16 "
                                  "in your base file", data)
    if fp16.ok:  # the shipped bases ask for bf16: runs would fail without an edit
        return Check("AMP", FAIL, f"bf16 fails on {device} ({bf16.detail}); fp16 works: set train.amp: fp16 "
                                  "(or off) in your base file", data)
    if bf16.ok:
        return Check("AMP", WARN, f"fp16 fails on {device} ({fp16.detail}); bf16 (the default) works", data)
    return Check("AMP", FAIL, f"bf16 and fp16 both fail on {device} ({bf16.detail}); set train.amp: off", data)


def channels_last_check(device: str) -> Check:
    result = probe_step(device, None, channels_last=True)
    data = {"device": device, "ok": result.ok, "ms": round(result.ms, 2)}
    if result.ok:
        return Check("channels_last", OK, f"forward+backward on {device} equals NCHW ({result.ms:.1f} ms)", data)
    # train.channels_last is on in every shipped base: a failing device blocks the default workflow.
    return Check("channels_last", FAIL, f"fails on {device} ({result.detail}); set train.channels_last: false", data)
