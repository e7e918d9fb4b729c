"""``hemoprofile export-for-annotation`` and ``hemoprofile train-segmenter``: teach the segmenter a lab's
own nuclei. Export the tiles of a segmented slide where the segmenter is least sure, correct them in the
Cellpose GUI (or any tool writing mask images), fine-tune the model on the corrected folders.

The parsers import nothing heavy; the segment stage (and torch, for training) loads when a command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXPORT_EXAMPLE = """example:
  hemoprofile export-for-annotation results/P01_S1 fix_me -k 8 --config config/config.yaml
  python -m cellpose            # then File > Load image: fix_me/cellpose/*.tif, correct, save (Ctrl+S)
"""

TRAIN_EXAMPLE = """example:
  hemoprofile train-segmenter fix_me/cellpose --out my_models/my_lab.pt --steps 200
  # then set segment.model: my_models/my_lab.pt in the config and rerun snakemake
"""


def _config(path: Path | None) -> dict | None:
    if path is None:
        return None
    from hemoprofile.config import load_config

    return load_config(path)


def add_export_for_annotation_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-for-annotation",
        help="export the tiles of a segmented slide where the segmenter is least sure, for correction",
        description="Score every tile of a segmented slide (SLIDE_DIR holds the segment stage's "
                    "preprocessed.zarr and labels.zarr) by how unsure the segmenter is, and write the K least "
                    "sure as OUT_DIR/cellpose/<name>.tif + <name>_seg.npy (opens in the Cellpose 3 GUI), "
                    "OUT_DIR/tiff/<name>.tif + <name>_masks.tif, and OUT_DIR/manifest.csv (positions, scores). "
                    "The uncertainty measure is described in hemoprofile.segment.annotation.",
        epilog=EXPORT_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("slide_dir", type=Path, metavar="SLIDE_DIR",
                        help="results/<slide> (with preprocessed.zarr and labels.zarr)")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    parser.add_argument("-k", type=int, default=8, help="tiles to export (default 8)")
    parser.add_argument("--config", type=Path, help="the config the slide was segmented with (its segment "
                        "section and seed); default: what labels.zarr records, over the schema's defaults")
    parser.add_argument("--seed", type=int, help="the config seed the slide was segmented with (default: the "
                        "config's, else 0)")
    parser.add_argument("--candidates", type=int, help="tiles rescored by the backend (default max(4 K, 16))")
    parser.add_argument("--tile-size", type=int, help="tile edge in pixels (default: labels.zarr's chunks)")
    parser.set_defaults(func=run_export_for_annotation)


def run_export_for_annotation(args) -> int:
    from hemoprofile.segment.annotation import export_for_annotation

    config = _config(args.config)
    seed = args.seed if args.seed is not None else (config["seed"] if config else 0)
    for name in ("preprocessed.zarr", "labels.zarr"):
        if not (args.slide_dir / name).exists():
            raise FileNotFoundError(f"{args.slide_dir / name} not found: SLIDE_DIR must be a segmented slide's "
                                    "results folder (run the workflow's segment rule first)")
    table = export_for_annotation(args.slide_dir / "preprocessed.zarr", args.slide_dir / "labels.zarr", args.out_dir,
                                  k=args.k, segment_cfg=config["segment"] if config else None, seed=seed,
                                  candidates=args.candidates, tile_size=args.tile_size, slide=args.slide_dir.name)
    print(table.to_string(index=False))
    return 0


def add_train_segmenter_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-segmenter",
        help="fine-tune the segmentation model on your own annotated folders",
        description="Fine-tune a Cellpose model (default: the bundled one) on folders of image / mask pairs "
                    "(<name>.tif + <name>_seg.npy from the Cellpose GUI, or <name>_masks.tif/png). A seeded "
                    "share of the images is held out and scored before and after; MODEL's .pt.json sidecar "
                    "records the data (files and hashes), the steps and those scores.",
        epilog=TRAIN_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folders", type=Path, nargs="+", metavar="FOLDER")
    parser.add_argument("--out", type=Path, required=True, metavar="MODEL", help="model file to write (.pt)")
    parser.add_argument("--start", metavar="MODEL", help="model file to start from (default: the bundled model)")
    parser.add_argument("--config", type=Path, help="config file: its train_segmenter section (finetune, batch "
                        "size, seeds) and segment section (channels of raw multi-channel images)")
    parser.add_argument("--steps", type=int, help="optimisation steps (default: train_segmenter.finetune.steps)")
    parser.add_argument("--learning-rate", type=float, help="default: train_segmenter.finetune.learning_rate")
    parser.add_argument("--validation-fraction", type=float,
                        help="share held out (default: train_segmenter.finetune.validation_fraction)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: train_segmenter.threads, 1)")
    parser.set_defaults(func=run_train_segmenter)


def run_train_segmenter(args) -> int:
    from hemoprofile.segment.training.finetune import finetune_from_folders

    config = _config(args.config)
    params = dict(config["train_segmenter"]) if config else {}
    overrides = {"steps": args.steps, "learning_rate": args.learning_rate,
                 "validation_fraction": args.validation_fraction}
    if args.threads:
        params["threads"] = args.threads
    params["finetune"] = {**dict(params.get("finetune") or {}), **{k: v for k, v in overrides.items() if v is not None}}
    result = finetune_from_folders(args.folders, args.out, params, config["segment"] if config else None,
                                   start_model=args.start)
    print(json.dumps({"model": result["model"], "steps": result["steps"], "images": result["data"]["n_images"],
                      "held_out_before": result["before"], "held_out_after": result["after"]}, indent=1))
    return 0


#: The subcommands of this module, for :data:`hemoprofile.cli.main.SUBCOMMANDS`.
ANNOTATION_SUBCOMMANDS = {
    "export-for-annotation": add_export_for_annotation_parser,
    "train-segmenter": add_train_segmenter_parser,
}
