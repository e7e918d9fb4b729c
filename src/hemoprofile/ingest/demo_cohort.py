"""A generated cohort of single-cell collections for the offline collection demo (``config/collections.yaml``).

Each patient is a folder of stained-smear crops re-sampled from a source collection in the PBC layout
(``images/<class>/*.jpg``): the patient's composition over the 8 PBC classes is drawn from a Dirichlet
around its condition's (``collection_demo.conditions``: a control differential and AML-like ones shifted
towards immature granulocytes, monocytes and erythroblasts), its cells are drawn from that composition,
and every cell is a randomly chosen source crop of its class under a random flip / 90° rotation, a
per-patient stain shift (gain per RGB channel), a small per-cell brightness jitter and camera noise,
saved as JPEG.
The folder holds no labels (as a clinician's export would); ``truth.csv`` beside it lists each file's
source class and crop. ``bad_files`` adds the kinds of junk real collections hold (an empty .jpg, a
macOS ``.DS_Store`` saved as .jpg, a byte-identical duplicate) to some patients, so the demo exercises the
QC table.

What this is not: the crops are PBC images of healthy donors' cells. The PBC classes have no blast, so
the AML-like shift is a shift between the classes the bundled ``pbc8`` classifier knows; nothing here is
leukaemic morphology. The bundled classifier was trained on 3,200 of the 4,000 images in
``shared/data/pbc``; with that folder as the source its cell-level accuracy on the demo is optimistic.

The plan (:func:`plan_collection_cohort`) depends only on the config, so the workflow builds its job
graph from it before any file exists; :func:`write_demo_patient` writes one patient.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

#: Image suffixes a source class folder is read for.
_SOURCE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def plan_collection_cohort(demo_cfg: Mapping, out_dir: str | os.PathLike) -> pd.DataFrame:
    """The demo cohort as a sample sheet: one ``source: collection`` row per patient.

    Patients are numbered C01, C02, ... across conditions in the order of ``demo_cfg["conditions"]``;
    the row's path is ``<out_dir>/<patient>/images``.

    Example
    -------
    >>> cfg = {"conditions": {"control": {"patients": 2, "composition": {"neutrophil": 1}},
    ...                       "aml": {"patients": 1, "composition": {"ig": 1}}}}
    >>> plan_collection_cohort(cfg, "demo")[["slide", "condition", "path"]].values.tolist()
    [['C01', 'control', 'demo/C01/images'], ['C02', 'control', 'demo/C02/images'], ['C03', 'aml', 'demo/C03/images']]
    """
    conditions = demo_cfg["conditions"]
    n = sum(int(spec["patients"]) for spec in conditions.values())
    width = max(2, len(str(n)))
    rows, number = [], 0
    for condition, spec in conditions.items():
        for _ in range(int(spec["patients"])):
            number += 1
            patient = f"C{number:0{width}d}"
            rows.append({"slide": patient, "patient": patient, "condition": condition,
                         "path": os.path.join(os.fspath(out_dir), patient, "images"), "source": "collection",
                         "modality": str(demo_cfg.get("modality", "smear"))})
    return pd.DataFrame(rows, columns=["slide", "patient", "condition", "path", "source", "modality"])


def _source_files(source: Path) -> dict[str, list[Path]]:
    root = source / "images" if (source / "images").is_dir() else source
    classes = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _SOURCE_SUFFIXES and p.stat().st_size)
        if files:
            classes[folder.name] = files
    if not classes:
        raise ValueError(f"{source}: no class folders with images (expected images/<class>/*.jpg, the PBC layout)")
    return classes


def patient_composition(demo_cfg: Mapping, condition: str, rng: np.random.Generator) -> dict[str, float]:
    """A patient's composition: Dirichlet(patient_variation x the condition's composition, normalised)."""
    spec = demo_cfg["conditions"][condition]["composition"]
    names = list(spec)
    mean = np.asarray([float(spec[k]) for k in names])
    if mean.sum() <= 0:
        raise ValueError(f"collection_demo.conditions.{condition}.composition sums to 0")
    mean = mean / mean.sum()
    alpha = np.maximum(float(demo_cfg["patient_variation"]) * mean, 1e-3)
    return dict(zip(names, rng.dirichlet(alpha)))


def write_demo_patient(demo_cfg: Mapping, row: Mapping, index: int, source: str | os.PathLike,
                       images_dir: str | os.PathLike, truth_csv: str | os.PathLike) -> dict:
    """Write one patient's folder of crops (``images_dir``) and its ``truth_csv``.

    Parameters
    ----------
    demo_cfg : the ``collection_demo`` config section.
    row : the patient's plan row (:func:`plan_collection_cohort`).
    index : the patient's position in the plan (seeds its draws with ``demo_cfg["seed"]``).
    source : the PBC-layout folder crops are drawn from.

    Returns
    -------
    dict: patient, n_cells, counts (class -> cells), bad_files (names added).
    """
    from PIL import Image

    rng = np.random.default_rng([int(demo_cfg["seed"]), int(index)])
    files = _source_files(Path(source))
    composition = patient_composition(demo_cfg, str(row["condition"]), rng)
    unknown = [c for c in composition if c not in files]
    if unknown:
        raise ValueError(f"{source}: no images for class(es) {unknown} named in collection_demo.conditions "
                         f"(classes found: {', '.join(files)})")
    n_cells = int(demo_cfg["cells_per_patient"])
    classes = list(composition)
    drawn = rng.choice(len(classes), size=n_cells, p=np.asarray(list(composition.values())))
    stain = rng.uniform(1 - demo_cfg["stain_jitter"], 1 + demo_cfg["stain_jitter"], size=3)
    out = Path(images_dir)
    out.mkdir(parents=True, exist_ok=True)
    truth = []
    for i, k in enumerate(drawn):
        cls = classes[int(k)]
        src = files[cls][int(rng.integers(len(files[cls])))]
        with Image.open(src) as image:
            pixels = np.asarray(image.convert("RGB"), np.float32)
        pixels = np.rot90(pixels, int(rng.integers(4)))
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        gain = stain * rng.uniform(1 - demo_cfg["cell_jitter"], 1 + demo_cfg["cell_jitter"])
        # camera noise (sigma 2 grey levels): with few source crops, two draws of one crop in one
        # orientation with near-equal gains would otherwise be byte-identical files (duplicates)
        noise = rng.normal(0.0, 2.0, size=pixels.shape).astype(np.float32)
        pixels = np.clip(np.rint(pixels * gain + noise), 0, 255).astype(np.uint8)
        name = f"cell_{i + 1:05d}.jpg"
        Image.fromarray(np.ascontiguousarray(pixels)).save(out / name, quality=92)
        truth.append({"file": name, "class": cls, "source": str(src)})
    bad = []
    if demo_cfg.get("bad_files", True) and truth:
        if index % 4 == 0:
            (out / "zz_empty.jpg").write_bytes(b"")
            bad.append("zz_empty.jpg")
        if index % 5 == 1:  # what the PBC archive ships: a macOS folder index saved under an image name
            (out / "zz_DS_Store.jpg").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
            bad.append("zz_DS_Store.jpg")
        if index % 6 == 2:
            (out / "zz_copy.jpg").write_bytes((out / truth[0]["file"]).read_bytes())
            bad.append("zz_copy.jpg")
    table = pd.DataFrame(truth, columns=["file", "class", "source"])
    Path(truth_csv).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(truth_csv, index=False)
    counts = table["class"].value_counts().to_dict()
    return {"patient": str(row["patient"]), "n_cells": n_cells, "counts": counts, "bad_files": bad}
