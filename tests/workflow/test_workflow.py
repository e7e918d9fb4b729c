"""The workflow end to end on a tiny synthetic cohort: lint, dry run, outputs, config errors, reruns."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from helpers.tiny_workflow import TINY_CONFIG, TINY_SLIDES

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def snakemake(workdir, *args, check=True):
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def write_config(workdir, config):
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))


def planned_jobs(workdir):
    """Rule -> job count from a dry run's job stats table."""
    out = snakemake(workdir, "--dry-run").stdout
    if "Nothing to be done" in out:
        return {}
    stats = out.split("Job stats:", 1)[1]
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)\s*$", stats, re.M) if rule != "total"}


def downstream_rules(workdir, rule):
    """Rules that depend, directly or not, on ``rule``, from Snakemake's rule graph."""
    dot = snakemake(workdir, "--rulegraph").stdout
    names = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', dot, re.M))
    children = {}
    for parent, child in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M):
        children.setdefault(names[parent], set()).add(names[child])
    found, todo = set(), [rule]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    write_config(workdir, TINY_CONFIG)
    result = snakemake(workdir)
    return workdir, result


def test_lint_reports_nothing():
    result = subprocess.run([SNAKEMAKE, "--lint"], capture_output=True, text=True, cwd=REPO)
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr, (
        result.stdout + result.stderr
    )


def test_dry_run_of_the_demo_config_plans_every_stage(tmp_path):
    # a fresh working directory, so results of an earlier `make demo` in the checkout do not matter
    write_config(tmp_path, yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    result = snakemake(tmp_path, "--dry-run")
    for rule in ("simulate_slide", "synthetic_cohort", "tile", "preprocess", "all"):
        assert re.search(rf"^{rule}\s+\d+", result.stdout, re.M), (rule, result.stdout)


def test_bad_config_stops_before_any_job(tmp_path):
    bad = {**TINY_CONFIG, "tile": {"size": 96, "overlap": 5}}
    write_config(tmp_path, bad)
    result = snakemake(tmp_path, check=False)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "'overlap'" in message and "allowed: compression_level, size" in message
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_tiny_run_writes_ome_zarr_for_every_slide(tiny_run):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    workdir, result = tiny_run
    slides = TINY_SLIDES
    truth = workdir / "results" / "synthetic" / "truth_cells.parquet"
    assert truth.exists() and (workdir / "results" / "synthetic" / "samples.tsv").exists()
    for slide in slides:
        for name in ("image.zarr", "preprocessed.zarr"):
            path = workdir / "results" / slide / name
            group = zarr.open_group(str(path), mode="r")
            assert group.attrs["ome"]["omero"]["channels"][0]["label"] == "DAPI"
            assert group["0"].shape == (4, 256, 256) and group["0"].chunks == (1, 96, 96)
            node = next(iter(Reader(parse_url(str(path)))()))
            assert node.metadata["channel_names"] == ["DAPI", "CK", "VIM", "CD45"]
        image = zarr.open_group(str(workdir / "results" / slide / "image.zarr"), mode="r")["0"]
        assert image.dtype == np.uint16 and image[0].max() > 0
        # view.zarr: the image (pyramid.smallest 128: two levels) with labels.zarr as its NGFF labels
        nodes = list(Reader(parse_url(str(workdir / "results" / slide / "view.zarr")))())
        assert len(nodes[0].data) == 2 and any(n.zarr.path.rstrip("/").endswith("labels/cells") for n in nodes)
    # progress went to the terminal and the per-slide log
    assert "tile P01_S1" in result.stderr
    assert (workdir / "results" / "logs" / "preprocess" / "P01_S1.log").read_text().strip()


def _without_timings(value):
    """A JSON value without its wall-clock entries (keys naming seconds or times), which differ between runs."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items()
                if not any(word in k for word in ("seconds", "time", "per_second", "started", "finished"))}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@pytest.mark.slow
def test_two_runs_from_scratch_give_identical_tables_predictions_and_arrays(tiny_run, tmp_path):
    """Reproducibility on the CPU: bitwise-equal tables and arrays. Runs before the rerun test below,
    which changes the first run's outputs."""
    import pandas as pd

    first = tiny_run[0] / "results"
    write_config(tmp_path, TINY_CONFIG)
    snakemake(tmp_path)
    second = tmp_path / "results"

    tables = sorted(p.relative_to(first) for p in first.rglob("*.parquet"))
    names = {p.name for p in tables}
    for wanted in ("cells.parquet", "predictions.parquet", "embedding.parquet", "patients.parquet",
                   "oof_predictions.parquet", "importances.parquet", "patient_predictions.parquet"):
        assert wanted in names, f"the run wrote no {wanted}"
    for path in tables:
        a, b = pd.read_parquet(first / path), pd.read_parquet(second / path)
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=str(path))

    arrays = [p.parent.relative_to(first) for p in first.rglob("zarr.json")
              if (p.parent / "c").exists() or p.parent.name == "0"]
    assert any("patches.zarr" in str(p) for p in arrays) and any("labels.zarr" in str(p) for p in arrays)
    for path in arrays:
        a, b = zarr.open_array(str(first / path), mode="r"), zarr.open_array(str(second / path), mode="r")
        assert a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_array_equal(a[...], b[...], err_msg=str(path))

    for path in sorted(p.relative_to(first) for p in first.rglob("*.json") if p.name != "zarr.json"):
        a, b = (json.loads((root / path).read_text()) for root in (first, second))
        assert _without_timings(a) == _without_timings(b), path


@pytest.mark.slow
def test_patient_level_outputs_and_report(tiny_run):
    import pandas as pd

    cohort = tiny_run[0] / "results" / "cohort"
    patients = pd.read_parquet(cohort / "patients.parquet")
    assert patients["patient"].tolist() == [f"P{i:02d}" for i in range(1, 8)]
    assert (patients.set_index("patient").loc["P03", "condition"]) == "unknown"
    columns = pd.read_csv(cohort / "patients_columns.tsv", sep="\t")
    assert columns["column"].tolist() == patients.columns.tolist()
    predictions = pd.read_parquet(cohort / "patient_predictions.parquet")
    assert set(predictions["patient"]) == set(patients["patient"])  # the unknown patient is scored too
    assert predictions["p_disease"].between(0, 1).all()
    metrics = json.loads((cohort / "patient_model" / "metrics.json").read_text())
    assert set(metrics["stages"]) == {"disease", "subtype", "overall"} and metrics["n_unlabelled"] == 1
    html = (cohort / "report.html").read_text()
    for section in ("summary", "qc", "composition", "classifiers", "latent", "rare_events", "interaction",
                    "ctc_review", "patients", "importances"):
        assert f'id="{section}"' in html, section
    # the interaction stage: 8 windows per slide predicted out of fold, its columns in the patient table
    # (described) but not among the patient model's features (interaction.patient_model is false)
    windows = pd.read_parquet(cohort / "interaction" / "predictions.parquet")
    assert len(windows) == 8 * 7 and set(windows["target_source"]) == {"truth"}
    assert windows.groupby("patient")["fold"].nunique().eq(1).all()
    interaction = [c for c in patients.columns if c.startswith("interaction_")]
    assert len(interaction) == 3 and set(interaction) <= set(columns["column"])
    assert patients["interaction_contacts_per_1000_cells"].notna().all()
    assert metrics["features"] and not any(f.startswith("interaction_") for f in metrics["features"])
    assert "Predicted vs true contacts" in html


@pytest.mark.slow
def test_snakemake_report_builds_with_captions(tiny_run, tmp_path):
    import zipfile

    workdir, _ = tiny_run
    target = tmp_path / "snakemake_report.zip"
    snakemake(workdir, "--report", str(target))
    with zipfile.ZipFile(target) as archive:
        names = archive.namelist()
        text = "".join(archive.read(n).decode("utf-8", "replace") for n in names if n.endswith((".html", ".js")))
    assert any(n.endswith("report.html") for n in names)
    assert any("patients.parquet" in n for n in names) and any("metrics.json" in n for n in names)
    assert "two-stage patient model" in text  # a caption (workflow/report/patient_metrics.rst)


def _mtimes(workdir, pattern):
    return {p: p.stat().st_mtime_ns for p in sorted((workdir / "results").glob(pattern))}


@pytest.mark.slow
def test_changing_one_preprocess_parameter_reruns_only_preprocess(tiny_run):
    workdir, _ = tiny_run
    assert planned_jobs(workdir) == {}, "a second run with nothing changed must run nothing"
    tiles_before = _mtimes(workdir, "*/image.zarr/zarr.json")
    simulated_before = _mtimes(workdir, "synthetic/*/truth_cells.parquet")
    preprocessed_before = _mtimes(workdir, "*/preprocessed.zarr/zarr.json")

    changed = yaml.safe_load(yaml.safe_dump(TINY_CONFIG))
    changed["preprocess"]["channels"]["DAPI"]["denoise"]["weight"] = 0.2
    write_config(workdir, changed)
    try:
        jobs = planned_jobs(workdir)
        assert jobs.get("preprocess") == len(TINY_SLIDES)
        assert set(jobs) <= downstream_rules(workdir, "preprocess") | {"preprocess"}, jobs
        time.sleep(0.01)
        snakemake(workdir)
        assert _mtimes(workdir, "*/image.zarr/zarr.json") == tiles_before
        assert _mtimes(workdir, "synthetic/*/truth_cells.parquet") == simulated_before
        after = _mtimes(workdir, "*/preprocessed.zarr/zarr.json")
        assert all(after[p] != preprocessed_before[p] for p in after)
        assert planned_jobs(workdir) == {}
    finally:
        write_config(workdir, TINY_CONFIG)


@pytest.mark.slow
def test_a_review_file_reruns_only_aggregation_and_what_follows(tiny_run):
    """The CTC review round trip in the workflow: a reviews/<slide>.csv beside the sample sheet changes the
    patient's CTC count and reruns only aggregate_patients, ctc_table and their dependants; a malformed
    one stops the run naming the file."""
    import pandas as pd

    workdir, _ = tiny_run
    snakemake(workdir)  # up to date whatever ran before (the preprocess test restores its config)
    assert planned_jobs(workdir) == {}
    results = workdir / "results"
    counts = {s: len(pd.read_parquet(results / s / "candidates.parquet")) for s in TINY_SLIDES}
    slide = max(counts, key=counts.get)
    assert counts[slide] >= 1, counts
    candidates = pd.read_parquet(results / slide / "candidates.parquet")
    patient = pd.read_csv(results / "synthetic" / "samples.tsv", sep="\t").set_index("slide").loc[slide, "patient"]
    before = pd.read_parquet(results / "cohort" / "patients.parquet").set_index("patient").loc[patient, "ctc_count"]
    reviews = workdir / "config" / "reviews"
    reviews.mkdir(exist_ok=True)
    review = reviews / f"{slide}.csv"
    decisions = ["not_CTC"] + ["CTC"] * (len(candidates) - 1)
    pd.DataFrame({"slide": slide, "cell_id": candidates["cell_id"], "decision": decisions}).to_csv(review, index=False)
    try:
        jobs = planned_jobs(workdir)
        assert set(jobs) == {"aggregate_patients", "ctc_table", "train_patient_model", "predict_patients", "report",
                             "all"}, jobs
        snakemake(workdir)
        after = pd.read_parquet(results / "cohort" / "patients.parquet").set_index("patient").loc[patient]
        assert after["ctc_count"] == before - 1 and after["ctc_reviewed_slides"] == 1
        table = pd.read_csv(results / "cohort" / "ctc_review.tsv", sep="\t")
        row = table[(table["level"] == "slide") & (table["slide"] == slide)].iloc[0]
        assert (row["reviewed_not_ctc"], row["reviewed_ctc"]) == (1, len(candidates) - 1)
        assert planned_jobs(workdir) == {}

        review.write_text(f"slide,cell_id,decision\n{slide},{int(candidates['cell_id'][0])},perhaps\n")
        failed = snakemake(workdir, check=False)
        assert failed.returncode != 0
        assert f"{slide}.csv: unknown decision(s) ['perhaps']" in failed.stdout + failed.stderr + "".join(
            p.read_text() for p in (results / "logs").glob("aggregate_patients.log"))
    finally:
        review.unlink()
        snakemake(workdir)
