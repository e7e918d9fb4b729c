"""Cellpose 3 model files: the network (with its style vector padded), loading a file or a built-in
name, the fp16 save and the JSON sidecar, and the torch device. One copy, used by inference
(:mod:`hemoprofile.segment.segmenter`) and training (:mod:`hemoprofile.segment.training`).

Model file contract
    - ``<model>`` (any name, ``.pt`` by convention) is a ``torch.save``'d ``state_dict`` of
      ``cellpose.resnet_torch.CPnet``; float tensors may be float16 (cast to float32 on loading).
    - ``<model>.json`` -- the model path with ``.json`` *appended* (``hemoprofile_cellpose.pt.json``) --
      is the JSON sidecar (:func:`write_sidecar`): ``nbase``, ``diam_mean``, ``nchan`` and, for the
      project's models, how inputs are prepared, the diameter estimator and the training record.

torch and cellpose are imported inside the functions that need them, so importing this module (the
workflow does, to tell a model file from a built-in name) stays light.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from hemoprofile.models import DEFAULT_SEGMENTATION_MODEL, is_bundled, resolve_model

log = logging.getLogger(__name__)

#: Cellpose 3 built-in model names accepted as ``segment.model`` (they download on first use).
PRETRAINED_MODELS = ("cyto3", "cyto2", "cyto", "nuclei", "tissuenet_cp3", "livecell_cp3", "yeast_PhC_cp3",
                     "yeast_BF_cp3", "bact_phase_cp3", "bact_fluor_cp3", "deepbacs_cp3", "cyto2_cp3")
#: The JSON sidecar of a model file is the model path with this appended (``x.pt`` -> ``x.pt.json``).
SIDECAR_SUFFIX = ".json"
#: ``cellpose.core.run_net`` (3.1) stores each image's style vector in a fixed 256-wide array.
CELLPOSE_STYLE_WIDTH = 256


def cellpose_device(requested: str = "auto"):
    """Return the torch device Cellpose runs on for ``auto`` (CUDA when available, else CPU), ``cpu``
    or ``cuda``, logged.

    Built on the project's one device helper, :func:`hemoprofile.nn.devices.pick_device`; Cellpose
    inference runs in float32, so no mixed precision is requested.
    """
    from hemoprofile.nn.devices import pick_device

    return pick_device(requested, mixed_precision=False, logger=log).device


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """The JSON sidecar of a model file: the model path with ``.json`` appended (``x.pt.json``).

    Example
    -------
    >>> sidecar_path("models/segmenter.pt").name
    'segmenter.pt.json'
    """
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + SIDECAR_SUFFIX)


def is_model_file(model: str) -> bool:
    """True when ``segment.model`` names a file: a bundled model (``bundled:<name>``) or a path, i.e.
    anything that is not a Cellpose built-in name."""
    return str(model) not in PRETRAINED_MODELS


def model_file(model: str | os.PathLike) -> Path:
    """The file a ``segment.model`` value names: the bundled model's (``bundled:hemoprofile_cellpose``,
    found in the installed package, :mod:`hemoprofile.models`) or the path itself (relative to the
    working directory).

    Raises
    ------
    FileNotFoundError naming the value, the path it resolved to and the ways forward.

    Example
    -------
    >>> model_file("bundled:hemoprofile_cellpose").name
    'hemoprofile_cellpose.pt'
    """
    if is_bundled(model):
        return resolve_model(model, "segment.model")
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(missing_model_message(model))
    return path


def missing_model_message(path: str | os.PathLike) -> str:
    """The error text for a missing model file: the path as given and resolved, and the ways forward."""
    resolved = Path(path).resolve()
    where = repr(str(path)) if str(resolved) == str(path) else f"{str(path)!r} ({resolved})"
    return (
        f"Cellpose model file {where} not found. Use the bundled model (segment.model: "
        f"{DEFAULT_SEGMENTATION_MODEL}, the default), or train the project's model with the "
        "workflow's train_segmenter rule (it writes the .pt file and its .pt.json sidecar under "
        "<results>/models/segmenter/), or set segment.backend: classical (no model needed), or set "
        f"segment.model to a Cellpose built-in name ({', '.join(PRETRAINED_MODELS[:4])}) on a machine that "
        "can download it."
    )


def _infer_nbase(state: Mapping) -> list[int] | None:
    # CPnet's encoder: downsample.down.res_down_<i>.conv.conv_0.2.weight has shape (nbase[i+1], nbase[i], 3, 3).
    widths = []
    i = 0
    while f"downsample.down.res_down_{i}.conv.conv_0.2.weight" in state:
        weight = state[f"downsample.down.res_down_{i}.conv.conv_0.2.weight"]
        if i == 0:
            widths.append(int(weight.shape[1]))
        widths.append(int(weight.shape[0]))
        i += 1
    return widths or None


_STYLE_PADDED_CPNET = None


def _style_padded_cpnet():
    """A ``CPnet`` whose style output is zero-padded (or cut) to 256 values.

    Cellpose 3.1's ``run_net`` writes styles into a fixed (n, 256) array, so a narrower net
    (``nbase[-1]`` of 128, say) fails inside ``model.eval``. Styles only feed Cellpose's size model,
    which the project does not use, so padding them changes no mask.
    """
    global _STYLE_PADDED_CPNET
    if _STYLE_PADDED_CPNET is None:
        import torch.nn.functional as F
        from cellpose.resnet_torch import CPnet

        class StylePaddedCPnet(CPnet):
            def forward(self, data):
                out, style, features = super().forward(data)
                width = style.shape[1]
                if width < CELLPOSE_STYLE_WIDTH:
                    style = F.pad(style, (0, CELLPOSE_STYLE_WIDTH - width))
                return out, style[:, :CELLPOSE_STYLE_WIDTH], features

        _STYLE_PADDED_CPNET = StylePaddedCPnet
    return _STYLE_PADDED_CPNET


def build_net(nbase: Sequence[int], diam_mean: float, nout: int = 3):
    """A fresh ``CPnet`` (random weights) with the given widths; ``nbase[0]`` is the number of inputs.

    When ``nbase[-1]`` is not 256 the net's style output is zero-padded to 256 values (see
    :func:`_style_padded_cpnet`); the state dict is that of a plain ``CPnet``.
    """
    from cellpose.resnet_torch import CPnet

    cls = CPnet if list(nbase)[-1] == CELLPOSE_STYLE_WIDTH else _style_padded_cpnet()
    return cls(list(nbase), nout, sz=3, mkldnn=False, max_pool=True, diam_mean=float(diam_mean))


def load_cellpose_model(path_or_name: str | os.PathLike, device=None):
    """Load a Cellpose 3 ``CellposeModel`` from a model file (+ sidecar) or a built-in model name.

    Model file contract (files written by :func:`save_model_fp16` follow it)
        - ``<model>`` (any name, ``.pt`` by convention) is a ``torch.save``'d ``state_dict`` of
          ``cellpose.resnet_torch.CPnet``; float tensors may be float16 (they are cast to float32 here).
        - ``<model>.json`` -- the model path with ``.json`` *appended* (``hemoprofile_cellpose.pt.json``)
          -- is an optional JSON sidecar ``{"nbase": [...], "diam_mean": float, "nchan": 2, ...}``:

          ``nbase``: the U-Net widths *including the input channel count first*, as
          ``CellposeModel.nbase`` stores them: Cellpose's default is ``[2, 32, 64, 128, 256]``, a smaller
          net e.g. ``[2, 16, 32, 64, 128]``. A list without the leading ``nchan`` (``[16, 32, 64, 128]``)
          is accepted too. ``diam_mean``: the object diameter (pixels) the net was trained at; inputs are
          rescaled by ``diam_mean / diameter``. ``nchan``: network inputs (2: ``[cytoplasm, nucleus]`` or
          ``[nucleus, zeros]``). ``diam_labels`` is optional; other keys are ignored.
        - A net whose last width is not 256 is wrapped so its style vector is padded to 256 values
          (Cellpose 3.1's ``run_net`` assumes 256; styles do not affect the masks).
        - Without a sidecar the widths are read from the state dict's shapes and ``diam_mean`` from its
          ``diam_mean`` entry; a plain Cellpose-trained file therefore loads too.

    Parameters
    ----------
    path_or_name : a model file, a bundled model (``bundled:hemoprofile_cellpose``, see :func:`model_file`),
        or a Cellpose built-in name (``cyto3``, ``nuclei``, ``cyto2``; these are
        downloaded by Cellpose on first use, which needs network access).
    device : torch device; None picks one with :func:`cellpose_device` (``auto``).

    Returns
    -------
    cellpose.models.CellposeModel with ``.net`` in eval mode on ``device``.

    Raises
    ------
    FileNotFoundError naming the path and how to obtain a model, for a missing file.
    """
    name = str(path_or_name)
    path = model_file(name) if is_model_file(name) else None  # before the slow imports: fail fast
    try:
        import torch
        from cellpose import models
        from cellpose.resnet_torch import CPnet
    except ImportError as err:
        raise RuntimeError(f"the cellpose backend needs cellpose>=3.1,<4 and torch ({err}); install them "
                           "(envs/gpu.yaml) or set segment.backend: classical") from err

    device = cellpose_device("auto") if device is None else torch.device(device)
    gpu = device.type == "cuda"
    if not is_model_file(name):
        log.info("loading Cellpose built-in model %s (downloads on first use)", name)
        try:
            return models.CellposeModel(gpu=gpu, device=device, model_type=name)
        except Exception as err:  # network errors come in many types
            raise RuntimeError(f"cannot load Cellpose built-in model {name!r} ({err}); it must be downloaded "
                               "once with network access, or use a model file / segment.backend: classical") from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a loadable torch state dict ({err})") from err
    if not isinstance(state, Mapping) or "output.2.weight" not in state:
        raise ValueError(f"{path}: not a Cellpose CPnet state dict (no 'output.2.weight')")
    if any(k.startswith("W2") for k in state):
        raise ValueError(f"{path}: a Cellpose 4 (cpsam) model; this project runs Cellpose 3")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    sidecar = sidecar_path(path)
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    nchan = int(meta.get("nchan", 2))
    nbase = list(meta.get("nbase") or _infer_nbase(state) or [nchan, 32, 64, 128, 256])
    if nbase[0] != nchan or len(nbase) < 2 or nbase[1] <= nchan:
        nbase = [nchan, *nbase]
    if "diam_mean" in meta:
        diam_mean = float(meta["diam_mean"])
    elif "diam_mean" in state:
        diam_mean = float(state["diam_mean"].reshape(-1)[0])
    else:
        diam_mean = 30.0
    nout = int(state["output.2.weight"].shape[0])
    model = models.CellposeModel(gpu=gpu, device=device, pretrained_model=False, diam_mean=diam_mean, nchan=nchan)
    net_class = CPnet if nbase[-1] == CELLPOSE_STYLE_WIDTH else _style_padded_cpnet()
    net = net_class(nbase, nout, sz=3, mkldnn=model.mkldnn, max_pool=True, diam_mean=diam_mean)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit a CPnet with nbase {nbase} (sidecar {sidecar}): {err}") from err
    model.net = net.to(device)
    model.net.eval()
    model.nbase = nbase
    model.nclasses = nout
    model.diam_mean = diam_mean
    model.diam_labels = float(meta.get("diam_labels", float(net.diam_labels.reshape(-1)[0])))
    model.pretrained_model = str(path)
    log.info("loaded Cellpose model %s (nbase %s, diam_mean %.1f) on %s", path, nbase, diam_mean, device)
    return model


def write_sidecar(model_path: str | os.PathLike, meta: Mapping) -> Path:
    """Write the model's sidecar JSON (must hold ``nbase``, ``diam_mean``, ``nchan``)."""
    missing = {"nbase", "diam_mean", "nchan"} - set(meta)
    if missing:
        raise ValueError(f"sidecar lacks {sorted(missing)}")
    path = sidecar_path(model_path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(dict(meta), indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path


def read_sidecar(model_path: str | os.PathLike) -> dict:
    """Read the sidecar JSON of a model file (a path or a bundled model's name)."""
    path = sidecar_path(resolve_model(model_path) if is_bundled(model_path) else model_path)
    if not path.exists():
        raise FileNotFoundError(f"model sidecar not found: {path}")
    return json.loads(path.read_text())


def save_model_fp16(net, model_path: str | os.PathLike, meta: Mapping) -> dict:
    """Save a net as a float16 state dict plus its sidecar (atomic); return the sidecar contents."""
    import torch

    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()) for k, v in net.state_dict().items()}
    tmp = model_path.with_name(model_path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, model_path)
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    full = {**dict(meta), "nbase": list(net.nbase), "nout": int(net.nout), "nchan": int(net.nbase[0]),
            "diam_mean": float(net.diam_mean.item()), "diam_labels": float(net.diam_labels.item()),
            "dtype": "float16", "sha256": digest, "bytes": model_path.stat().st_size}
    write_sidecar(model_path, full)
    return full


def load_net(model_path: str | os.PathLike, device=None):
    """Rebuild the ``CPnet`` described by a model's sidecar and load its (fp16 or fp32) weights as fp32."""
    import torch

    meta = read_sidecar(model_path)
    net = build_net(meta["nbase"], meta["diam_mean"], meta.get("nout", 3))
    state = torch.load(model_path, map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    net.eval()
    if device is not None:
        net.to(device)
    return net, meta


