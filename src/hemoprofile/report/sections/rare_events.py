"""Section ``rare_events``: a gallery of the top CTC candidates (by ``p_ctc_CTC``) and of CTC–leukocyte
clusters, image crops (from patches.zarr, else the slide image) with score, slide and cell id."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hemoprofile.io.patches import open_patch_array
from hemoprofile.report.html import esc, img, not_available, rgb_uri
from hemoprofile.report.images import (CLUSTER_OTHER_RGB, OUTLINE_RGB, display_composite, outline_mask, paint,
                                       slide_crop)
from hemoprofile.report.inputs import TOP_CTC_CANDIDATES, TOP_CTC_CLUSTERS, ReportContext, SlideSummary
from hemoprofile.report.readers import have
from hemoprofile.vocabulary import to_unit

CLUSTER_CROP_MAX = 96        # px, largest side of a cluster crop (centred on the cluster)
CROP_MARGIN = 6              # px around a cluster's bounding box


def _candidate_crops(info: SlideSummary, rows: pd.DataFrame) -> tuple[list[np.ndarray | None], str]:
    """RGB crops of a slide's candidate cells: patches.zarr rows, else crops of the slide image."""
    if have(info.paths.get("patches")):
        try:
            array, channels, _ = open_patch_array(info.paths["patches"])
            if array.shape[0] == info.n_cells:
                return [display_composite(to_unit(np.asarray(array[int(r)])), channels) for r in rows["row"]], \
                    "patches.zarr"
        except ValueError:
            pass
    half = 16
    out = []
    for _, r in rows.iterrows():
        try:
            pixels, channels, _ = slide_crop(info.paths, int(r["y"]) - half, int(r["y"]) + half,
                                             int(r["x"]) - half, int(r["x"]) + half)
            out.append(display_composite(pixels, channels))
        except (FileNotFoundError, ValueError):
            out.append(None)
    return out, "the slide image"


def render(ctx: ReportContext) -> str:
    scored = [s for s in ctx.slides if s.ctc_top is not None]
    if not scored:
        return not_available("no slide has predictions with p_ctc_CTC (the ctc classifier task was not run)")
    by_slide = {s.slide: s for s in scored}
    top = pd.concat([s.ctc_top for s in scored], ignore_index=True)
    top = top.sort_values("p_ctc_CTC", ascending=False, kind="stable").head(TOP_CTC_CANDIDATES)
    n_ctc = sum(s.n_ctc or 0 for s in scored)
    tiles, sources = [], set()
    crops: dict[int, np.ndarray | None] = {}
    for slide, rows in top.groupby("slide", sort=False):
        images, source = _candidate_crops(by_slide[slide], rows)
        sources.add(source)
        crops.update(dict(zip(rows.index, images)))
    for i, r in top.iterrows():
        rgb = crops.get(i)
        picture = (img(rgb_uri(rgb), f"{r['slide']} cell {r['cell_id']}", width=3 * rgb.shape[1], pixelated=True)
                   if rgb is not None else '<div class="noimg">no image</div>')
        tiles.append(f'<figure class="cell">{picture}<figcaption>p = {r["p_ctc_CTC"]:.3f}<br>{esc(r["slide"])}'
                     f' · cell {int(r["cell_id"])}</figcaption></figure>')
    parts = [f"<p>{n_ctc:,} cells predicted CTC in {len(scored)} slides. The {len(top)} cells with the highest "
             f"CTC probability (<code>p_ctc_CTC</code>), whatever their predicted class; crops from "
             f"{esc(' and '.join(sorted(sources)))}, shown 3×.</p>",
             f'<div class="gallery">{"".join(tiles)}</div>']

    parts.append("<h3>CTC–leukocyte clusters</h3>")
    with_clusters = [s for s in scored if s.n_ctc_clusters is not None]
    clusters = [s.ctc_clusters for s in scored if s.ctc_clusters is not None]
    if not with_clusters:
        parts.append(not_available("no slide with CTC predictions has a clusters.parquet"))
    elif not clusters:
        parts.append(f"<p>No cell cluster holds both a predicted CTC and a leukocyte "
                     f"({len(with_clusters)} slides searched).</p>")
    else:
        table = pd.concat(clusters, ignore_index=True).sort_values("score", ascending=False).head(TOP_CTC_CLUSTERS)
        total = sum(s.n_ctc_clusters or 0 for s in with_clusters)
        tiles = []
        for _, r in table.iterrows():
            info = by_slide[r["slide"]]
            y0, y1, x0, x1 = (int(r["bbox_y0"]) - CROP_MARGIN, int(r["bbox_y1"]) + CROP_MARGIN,
                              int(r["bbox_x0"]) - CROP_MARGIN, int(r["bbox_x1"]) + CROP_MARGIN)
            cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
            half = CLUSTER_CROP_MAX // 2
            y0, y1, x0, x1 = max(y0, cy - half), min(y1, cy + half), max(x0, cx - half), min(x1, cx + half)
            try:
                pixels, channels, labels = slide_crop(info.paths, y0, y1, x0, x1)
                rgb = display_composite(pixels, channels)
                if labels is not None:
                    edge = outline_mask(labels)
                    ctc = np.isin(labels, list(r["ctc_ids"]))
                    others = np.isin(labels, [c for c in r["cell_ids"] if c not in set(r["ctc_ids"])])
                    rgb = paint(paint(rgb, edge & others, CLUSTER_OTHER_RGB), edge & ctc, OUTLINE_RGB)
                picture = img(rgb_uri(rgb), f"{r['slide']} cluster {r['cluster_id']}", width=3 * rgb.shape[1],
                              pixelated=True)
            except (FileNotFoundError, ValueError):
                picture = '<div class="noimg">no image</div>'
            tiles.append(f'<figure class="cell">{picture}<figcaption>max p = {r["score"]:.3f} · {int(r["size"])} cells '
                         f'({int(r["n_ctc"])} CTC)<br>{esc(r["slide"])} · cluster {int(r["cluster_id"])}<br>'
                         f'CTC cell {esc(", ".join(str(int(c)) for c in r["ctc_ids"]))}</figcaption></figure>')
        parts.append(f"<p>{total:,} clusters of touching cells hold at least one predicted CTC and one leukocyte; "
                     f"the {len(table)} with the highest CTC probability. Outlines: "
                     f'<span class="sw" style="background:#ffd900"></span> predicted CTC, '
                     f'<span class="sw" style="background:#00e6e6"></span> other members. Crops shown 3×.</p>'
                     f'<div class="gallery">{"".join(tiles)}</div>')
    return "".join(parts)
