"""Features: extraction from a model over a test loader, and the features npz files a run saves.

A model returns a dict of named outputs ("f_t" before the BNNeck, "f_i" after it, ...). The test
feature is one of them or, for multi-branch models, the concatenation of several along dim 1.
``extract_feature_set`` takes several outputs from ONE pass over the loader, so the features of
one model that are compared (f_t and f_i) come from the same forward passes.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["NPZ_KEYS", "extract_feature_set", "extract_features", "load_features_npz"]

NPZ_KEYS = ("q_feats", "g_feats", "q_pids", "g_pids", "q_camids", "g_camids")


# --------------------------------------------------------------------------- extraction


def extract_features(model: torch.nn.Module, loader: Any, device: Any, flip: bool = False,
                     feature_key: str | Sequence[str] = "f_i", normalize: bool = True,
                     amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Features of every image of ``loader``: (float32 N x D on CPU, pids, camids).

    ``loader`` yields ``(images, pids, camids, indices)`` — or with a fifth element, part masks, passed
    to the model as ``model(images, masks=...)`` (flipped with the images) —; rows come back in dataset-index order
    (the order of ``indices``), so a shuffled loader gives the same result as a sequential one.
    ``model(images)`` must return a dict holding ``feature_key``: one output name ("f_i" after the
    BNNeck, "f_t" before it) or a tuple/list of names whose outputs are concatenated along dim 1 in
    that order. ``flip`` averages the features of each image and its horizontal mirror before the
    optional L2 normalisation (of the whole, concatenated vector). ``amp_dtype`` enables CUDA
    autocast (ignored on other devices). The model is put in eval mode and restored afterwards.
    """
    names = _key_names(feature_key, "feature_key")
    feats, pids, camids = _extract(model, loader, device, names, flip, amp_dtype, "feature_key")
    f = torch.cat([feats[n] for n in names], 1) if len(names) > 1 else feats[names[0]]
    if normalize:
        f = torch.nn.functional.normalize(f, dim=1)
    return f, pids, camids


def extract_feature_set(model: torch.nn.Module, loader: Any, device: Any, keys: Sequence[str],
                        flip: bool = False, amp_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Several named outputs of ``model`` from one pass over ``loader``: ``{key: float32 N x D on CPU}``.

    Same loader contract, row order (dataset-index order, i.e. the order of the dataset's records),
    flip averaging, autocast and mode handling as ``extract_features``; the features are not
    normalised (callers score them with ``normalize`` as the run asks). Labels come with
    ``extract_features`` or from the dataset's records, which are in the same order.
    """
    if isinstance(keys, str):  # a bare string would be read as one key per character
        raise ValueError(f"keys must be a list of output names, got the string {keys!r}; use [{keys!r}]")
    names = _key_names(keys, "keys")
    feats, _, _ = _extract(model, loader, device, names, flip, amp_dtype, "keys")
    return feats


def _key_names(keys: str | Sequence[str], field: str) -> tuple[str, ...]:
    names = (keys,) if isinstance(keys, str) else tuple(keys)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{field} must be an output name or a non-empty list of output names, got {keys!r}")
    return tuple(dict.fromkeys(names))  # duplicates would only repeat work (and columns)


def _extract(model: torch.nn.Module, loader: Any, device: Any, names: tuple[str, ...], flip: bool,
             amp_dtype: torch.dtype | None, field: str
             ) -> tuple[dict[str, torch.Tensor], np.ndarray, np.ndarray]:
    """The flip-averaged float32 outputs ``names`` of every image, in dataset-index order."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    use_amp = amp_dtype is not None and device.type == "cuda"
    was_training = model.training
    model.eval()
    feats: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    pids, camids, order = [], [], []
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc="features", leave=False, disable=not sys.stderr.isatty()):
                images, batch_pids, batch_camids, indices = batch[:4]
                masks = batch[4].to(device, non_blocking=True) if len(batch) > 4 else None
                images = images.to(device, non_blocking=True)
                with torch.autocast(device_type="cuda", dtype=amp_dtype) if use_amp else contextlib.nullcontext():
                    out = _outputs(model, images, names, field, masks)
                    if flip:
                        mirrored = _outputs(model, images.flip(-1), names, field,
                                            None if masks is None else masks.flip(-1))
                        out = {n: (out[n] + mirrored[n]) / 2 for n in names}
                for n in names:
                    feats[n].append(out[n].float().cpu())
                pids.append(np.asarray(batch_pids).reshape(-1))
                camids.append(np.asarray(batch_camids).reshape(-1))
                order.append(np.asarray(indices).reshape(-1))
    finally:
        model.train(was_training)
    if not order:
        raise ValueError("the loader yielded no batches; there are no images to extract features from")
    sort = torch.from_numpy(np.argsort(np.concatenate(order), kind="stable"))
    return ({n: torch.cat(chunks)[sort] for n, chunks in feats.items()}, np.concatenate(pids)[sort.numpy()],
            np.concatenate(camids)[sort.numpy()])


def _outputs(model: torch.nn.Module, images: torch.Tensor, names: tuple[str, ...], field: str,
             masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    out = model(images) if masks is None else model(images, masks=masks)
    for key in names:
        if not isinstance(out, dict) or key not in out:
            have = sorted(out) if isinstance(out, dict) else type(out).__name__
            raise ValueError(f"{field} {key!r} is not among the model outputs ({have})")
        if out[key].ndim != 2:  # concatenation and distances need one vector per image
            raise ValueError(f"model output {key!r} has shape {tuple(out[key].shape)}; a feature must be "
                             "2-D (batch x dims)")
    return {key: out[key] for key in names}


# --------------------------------------------------------------------------- npz files


def load_features_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The six arrays ``score`` needs from an npz file (extra arrays, e.g. paths, are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such features file")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # zipfile/pickle errors: say which file, not a traceback
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc
    with data:
        missing = [k for k in NPZ_KEYS if k not in data.files]
        if missing:
            raise ValueError(f"{path}: missing array {missing[0]!r}; an npz needs {', '.join(NPZ_KEYS)}")
        arrays = {k: data[k] for k in NPZ_KEYS}
    for side in ("q", "g"):
        feats = arrays[f"{side}_feats"]
        if feats.ndim != 2 or not np.issubdtype(feats.dtype, np.floating):
            raise ValueError(f"{path}: {side}_feats must be a 2-D float array, got shape {feats.shape} {feats.dtype}")
        for name in (f"{side}_pids", f"{side}_camids"):
            if arrays[name].shape != (feats.shape[0],):
                raise ValueError(f"{path}: {name} has shape {arrays[name].shape}, expected ({feats.shape[0]},) "
                                 f"to match {side}_feats")
    if arrays["q_feats"].shape[1] != arrays["g_feats"].shape[1]:
        raise ValueError(f"{path}: q_feats has {arrays['q_feats'].shape[1]} dimensions but g_feats has "
                         f"{arrays['g_feats'].shape[1]}")
    return arrays
