# Slide (TIFF/OME-TIFF or HDSCA frame folder) -> OME-Zarr image, one chunk per tile.


rule tile:
    input:
        slide=slide_input,
    output:
        image=directory(f"{RESULTS}/{{slide}}/image.zarr"),
    params:
        reader=slide_reader_params,
        tile=config["tile"],
        pyramid=config["pyramid"],
        version=stage_version("tile"),
    log:
        f"{RESULTS}/logs/tile/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tile/{{slide}}.tsv"
    threads: config["threads"]["tile"]
    resources:
        mem_mb=2000,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/tile.py"
