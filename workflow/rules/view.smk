# The viewer entry of a slide: view.zarr = image.zarr as an OME-Zarr image with labels.zarr as its NGFF
# image-labels (labels/cells), every level linked by a relative symlink, nothing copied (a few KB).
# image.zarr and labels.zarr carry their own pyramids (config `pyramid`; written by the tile and segment
# rules, which own those folders). Open it with napari-ome-zarr: README.md, "Viewing a slide".
# A local rule: it only writes links and metadata, next to its inputs.

localrules:
    view,


rule view:
    input:
        image=f"{RESULTS}/{{slide}}/image.zarr",
        labels=f"{RESULTS}/{{slide}}/labels.zarr",
    output:
        view=directory(f"{RESULTS}/{{slide}}/view.zarr"),
    params:
        version=stage_version("view"),
    log:
        f"{RESULTS}/logs/view/{{slide}}.log",
    threads: 1
    resources:
        mem_mb=500,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/view.py"
