"""``hemoprofile train-classifier`` and ``hemoprofile classify``: a cell classifier trained on, or run
over, a folder of single-cell crops. The parsers import nothing heavy; torch loads when a command runs."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hemoprofile.models import DEFAULT_CLASSIFIER_MODEL

CLI_PATCH_SIZE = 112
CLI_CROP_MARGIN = 8


def _ingest(folder: Path, work: Path, patch_size: int, progress: Callable[[str], None]) -> tuple[Path, Path, dict]:
    """Ingest a collection folder (:func:`hemoprofile.ingest.collection.ingest_collection`); return (cells,
    patches, QC counts). Unusable files are skipped and listed in ``work/qc.csv``, never fatal, unless
    none can be used.

    An earlier ingestion in ``work`` at the same patch size is reused (``--work`` keeps it between runs).
    """
    import pandas as pd

    from hemoprofile.ingest.collection import ingest_collection, qc_summary
    from hemoprofile.io.patches import open_patch_array

    if not Path(folder).is_dir():
        raise FileNotFoundError(f"collection folder not found: {folder}")
    cells, patches, qc = work / "cells.parquet", work / "patches.zarr", work / "qc.csv"
    if cells.exists() and patches.exists() and qc.exists():
        try:
            array, _, meta = open_patch_array(patches)
            if int(array.shape[-1]) == int(patch_size) and meta.get("source") == str(folder):
                progress(f"reusing {patches} ({array.shape[0]} cells)")
                rows = pd.read_csv(qc, dtype=str, keep_default_na=False).to_dict(orient="records")
                return cells, patches, {**qc_summary(rows), "qc": str(qc)}
        except ValueError:
            pass
    work.mkdir(parents=True, exist_ok=True)

    def quiet_counts(message):  # per-file messages and the summary; not the running crop count
        if " crops of " not in message or " ingested from " in message:
            progress(message)

    summary = ingest_collection(folder, cells, patches, int(patch_size), out_qc=qc, progress=quiet_counts)
    return cells, patches, summary


def _work_dir(args, tag: str):
    """The ``--work`` folder (kept), or a temporary folder removed afterwards."""
    import contextlib
    import tempfile

    if getattr(args, "work", None):
        return contextlib.nullcontext(Path(args.work))
    return _TemporaryFolder(tempfile.mkdtemp(prefix=f"hemoprofile-{tag}-"))


class _TemporaryFolder:
    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc) -> None:
        import shutil

        shutil.rmtree(self.path, ignore_errors=True)


def _widths(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"widths must be positive, got {text!r}")
    return values


TRAIN_CLASSIFIER_EXAMPLES = """\
examples:
  hemoprofile train-classifier pbc/ --out pbc_model.pt --minutes 30
      train on a PBC-layout folder for 30 minutes; writes pbc_model.pt and pbc_model.metrics.json
  hemoprofile train-classifier crops/ --out model.pt --epochs 20 --patch-size 64 --work crops_ingested/
      64 px patches, at most 20 epochs, keeping the ingested patches for the next run
"""

CLASSIFY_EXAMPLES = f"""\
examples:
  hemoprofile classify pbc/ --out predictions.csv
      the bundled PBC blood smear classifier ({DEFAULT_CLASSIFIER_MODEL}), from any directory
  hemoprofile classify crops/ --model model.pt --out predictions.csv --tta 8
      your own model file (hemoprofile train-classifier), 8-fold flip/rotation averaging
"""


def _collection_parser(subparsers, name: str, help: str, description: str, func,
                       epilog: str | None = None) -> argparse.ArgumentParser:
    """A subcommand on a collection folder: ``COLLECTION_DIR`` first; :func:`_add_run_options` ends it."""
    p = subparsers.add_parser(name, help=help, description=description, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("collection", type=Path, metavar="COLLECTION_DIR")
    p.set_defaults(func=func)
    return p


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """``--device``, ``--threads`` and ``--work``, shared by both subcommands."""
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--work", type=Path, help="keep the ingested patches here (default: a temporary folder)")


def add_train_classifier_parser(subparsers) -> None:
    """Add ``hemoprofile train-classifier COLLECTION_DIR --out MODEL`` to an argparse subparsers object."""
    p = _collection_parser(
        subparsers, "train-classifier",
        help="train a cell classifier on a labelled single-cell collection (PBC layout)",
        description="Train a CellNet from scratch on a folder of labelled single-cell crops "
                    "(images/<class>/*.jpg + labels.csv with path,label). Writes MODEL and MODEL's "
                    "metrics next to it (<MODEL stem>.metrics.json), scored on a held-out stratified split.",
        func=train_classifier_command,
        epilog=TRAIN_CLASSIFIER_EXAMPLES,
    )
    p.add_argument("--out", type=Path, required=True, metavar="MODEL", help="model file to write (.pt)")
    p.add_argument("--metrics", type=Path, help="metrics JSON (default: MODEL with .metrics.json)")
    p.add_argument("--epochs", type=int, default=60, help="maximum epochs (default 60)")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock training budget in minutes")
    p.add_argument("--patch-size", type=int, default=CLI_PATCH_SIZE,
                   help=f"patch edge the collection is read at (default {CLI_PATCH_SIZE})")
    p.add_argument("--crop-margin", type=int, default=CLI_CROP_MARGIN,
                   help=f"network input = patch size - margin; random crops translate cells (default {CLI_CROP_MARGIN})")
    p.add_argument("--widths", type=_widths, default=[32, 64, 128, 256], help="stage widths (default 32,64,128,256)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--patience", type=int, default=10, help="evaluations without improvement before stopping (0: never)")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument("--channel-dropout", type=float, default=0.0)
    p.add_argument("--tta", type=int, default=8, choices=(1, 2, 4, 8), help="dihedral TTA at evaluation (default 8)")
    p.add_argument("--seed", type=int, default=0)
    _add_run_options(p)


def train_classifier_command(args) -> int:
    """Run ``hemoprofile train-classifier``: ingest the collection, train task ``collection``, write model + metrics."""
    def progress(message):
        print(message, flush=True)

    from hemoprofile.classify.checkpoints import write_classifier
    from hemoprofile.classify.labels import SlideInput, load_training_cells
    from hemoprofile.classify.metrics import format_confusion
    from hemoprofile.classify.training import train_task
    from hemoprofile.nn.devices import pick_device
    from hemoprofile.vocabulary import COLLECTION

    size = int(args.patch_size)
    crop = size - int(args.crop_margin) if args.crop_margin and size - int(args.crop_margin) >= 8 else None
    cfg = {
        "label_source": "collection", "device": args.device, "tta": args.tta, "max_cells_per_label": None,
        "model": {"widths": list(args.widths), "blocks": [1] * len(args.widths), "dropout": 0.1, "stem_stride": None},
        "train": {"epochs": args.epochs, "minutes": args.minutes, "batch_size": args.batch_size, "lr": args.lr,
                  "weight_decay": args.weight_decay, "label_smoothing": 0.1, "ema_decay": 0.995,
                  "patience": args.patience, "eval_every": 1, "balanced": True},
        "augment": {"dihedral": True, "crop": crop, "gain": 0.08, "offset": 0.03, "gamma": 0.0, "blur_sigma": 0.6,
                    "blur_p": 0.25, "channel_dropout": args.channel_dropout},
        "split": {"val_fraction": args.val_fraction, "test_fraction": args.test_fraction},
    }
    metrics_path = args.metrics or args.out.with_name(args.out.stem + ".metrics.json")
    with _work_dir(args, "train") as work:
        cells, patches, _ = _ingest(args.collection, work, size, progress)
        device = pick_device(args.device, threads=args.threads)
        progress(f"device: {device.description}")
        data = load_training_cells([SlideInput(args.collection.name, str(cells), str(patches))], "collection",
                                   seed=args.seed, progress=progress)
        ckpt, metrics = train_task(data, COLLECTION, cfg, args.seed, device, progress)
    mid = write_classifier(ckpt, metrics, args.out, metrics_path)
    progress(format_confusion(metrics["test"]))
    progress(f"wrote {args.out} (model id {mid}) and {metrics_path}")
    return 0


def add_classify_parser(subparsers) -> None:
    """Add ``hemoprofile classify COLLECTION_DIR --model MODEL --out predictions.csv`` to a subparsers object."""
    p = _collection_parser(
        subparsers, "classify",
        help="classify the cells of a single-cell collection with a trained model",
        description="Predict every image of a collection folder (images/**/*.jpg|png|tif; labels.csv optional). "
                    "Writes a CSV with path, predicted_label and one p_<class> column per class; when the "
                    "collection has labels, prints accuracy, macro F1 and the confusion matrix.",
        func=classify_command,
        epilog=CLASSIFY_EXAMPLES,
    )
    p.add_argument("--model", type=Path, default=Path(DEFAULT_CLASSIFIER_MODEL), metavar="MODEL",
                   help="a classifier file (hemoprofile train-classifier) or a bundled model "
                        f"(default: {DEFAULT_CLASSIFIER_MODEL}, shipped in the package)")
    p.add_argument("--out", type=Path, required=True, metavar="CSV")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--tta", type=int, default=1, choices=(1, 2, 4, 8))
    p.add_argument("--qc", type=Path, default=None, metavar="QC_CSV",
                   help="the per-file QC table (ok / converted / skipped and why; default: CSV with .qc.csv)")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 when any file was skipped (default: skip, list, summarise, exit 0)")
    _add_run_options(p)


def classify_command(args) -> int:
    """Run ``hemoprofile classify`` on a collection folder; write the predictions CSV atomically."""
    def progress(message):
        print(message, flush=True)

    import pandas as pd

    from hemoprofile.classify.checkpoints import load_classifier
    from hemoprofile.classify.inference import channel_index, classifier_probabilities
    from hemoprofile.classify.metrics import classification_metrics, format_confusion
    from hemoprofile.io import atomic_output
    from hemoprofile.io.patches import open_patch_array
    from hemoprofile.io.tables import read_cells
    from hemoprofile.nn.devices import pick_device

    clf = load_classifier(args.model)
    device = pick_device(args.device, threads=args.threads)
    with _work_dir(args, "classify") as work:
        cells_path, patches_path, qc = _ingest(args.collection, work, clf.patch_size, progress)
        qc_out = getattr(args, "qc", None) or args.out.with_name(args.out.name.removesuffix(".csv") + ".qc.csv")
        with atomic_output(qc_out) as tmp:
            shutil.copyfile(qc["qc"], tmp)
        cells = read_cells(cells_path)
        array, channels, _ = open_patch_array(patches_path)
        index = channel_index(clf.channels, channels, f"{args.model} on {args.collection}")
        start = time.perf_counter()
        probs = []
        for lo in range(0, array.shape[0], args.batch_size):
            probs.append(classifier_probabilities(clf, np.asarray(array[lo:lo + args.batch_size]), device,
                                                  args.batch_size, args.tta, index=index))
        probs = np.concatenate(probs) if probs else np.zeros((0, len(clf.output_classes)), np.float32)
        seconds = time.perf_counter() - start
    classes = clf.output_classes
    path_column = "path" if "path" in cells.columns else None
    out = pd.DataFrame({"path": cells[path_column] if path_column else cells["cell_id"].astype(str)})
    out["predicted_label"] = np.array(classes, dtype=object)[probs.argmax(1)] if len(probs) else []
    for j, c in enumerate(classes):
        out[f"p_{c}"] = probs[:, j]
    with atomic_output(args.out) as tmp:
        out.to_csv(tmp, index=False)
    progress(f"{len(out)} cells in {seconds:.1f} s ({len(out) / max(seconds, 1e-9):.0f} cells/s, {device.description}); "
             f"model {clf.model_id}; wrote {args.out}")
    if "label" in cells.columns and cells["label"].notna().any():
        known = cells["label"].isin(classes).to_numpy()
        if known.any():
            index = {c: i for i, c in enumerate(classes)}
            m = classification_metrics([index[v] for v in cells["label"][known]], probs[known].argmax(1), classes)
            progress(f"against labels.csv: accuracy {m['accuracy']:.4f}, balanced accuracy "
                     f"{m['balanced_accuracy']:.4f}, macro F1 {m['macro_f1']:.4f} on {m['n']} labelled cells")
            progress(format_confusion(m))
    skipped = ", ".join(f"{k} {v}" for k, v in qc["problems"].items())
    progress(f"files: {qc['n_files']} ({qc['n_ok']} ok, {qc['n_converted']} converted, {qc['n_skipped']} skipped"
             + (f": {skipped}" if skipped else "") + f"); QC table {qc_out}")
    if getattr(args, "strict", False) and qc["n_skipped"]:
        print(f"hemoprofile classify: --strict: {qc['n_skipped']} file(s) skipped", file=sys.stderr)
        return 1
    return 0
