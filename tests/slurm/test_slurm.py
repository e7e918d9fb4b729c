"""profiles/slurm: checked statically, then run end to end on a real one-node SLURM cluster.

The end-to-end tests start a throwaway cluster on this machine (slurm_cluster.py: munge, MariaDB,
slurmdbd, slurmctld, slurmd; two partitions `cpu` and `gpu`, two fake GPUs), run the workflow on
a tiny synthetic cohort with ``snakemake --profile profiles/slurm --workflow-profile none`` (the
README's command), and read the evidence from
``sacct``: every job went through SLURM, GPU rules ran in the GPU partition with a GPU allocated, a
failed job is reported with its SLURM log, retried with more memory, and a rerun resumes.

They need root and apt-get (or Slurm already installed). In CI (CI=true) a machine without them is
a failure; elsewhere the tests are skipped with the reason (shown by pytest's -ra summary).
On top of the README's command line come only what a one-node test cluster needs (a short delay
before the first status check, keeping the logs of successful jobs) and explicit targets in the
failure test. About 5 minutes, apt-get install included.
"""

import collections
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import slurm_cluster  # noqa: E402
from helpers.tiny_workflow import tiny_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
PROFILE = REPO / "profiles" / "slurm"
GPU_RULES = {"segment", "segment_shard", "train_segmenter", "finetune_segmenter", "train_classifier", "classify",
             "classify_collection", "train_embedder", "embed"}
GPU_PARTITION = "gpu"
CPU_PARTITION = "cpu"  # the test cluster's default partition, which CPU rules fall back to
# What the one-node test cluster needs on top of the profile (nothing about partitions or resources):
# the first status check after 8 s, not 40 (the plugin then adds 10 s per check that finds nothing
# finished, so checks come 8, 26, 54 s after a submission; a job here takes about 20 s), and the
# logs of successful jobs kept, to check them.
TEST_CLUSTER_ARGS = ["--slurm-init-seconds-before-status-checks", "8", "--slurm-keep-successful-logs"]

# The tiny cohort of the workflow tests (tests/helpers/tiny_workflow.py) in 128 px tiles. The SLURM run stops at
# the patient table and the embedding figures (SLURM_TARGETS): every slide stage, both GPU training rules
# and a cohort rule run through SLURM; the patient model and the report add nothing cluster-specific and
# run in tests/workflow.
TINY_CONFIG = tiny_config(tile={"size": 128}, preprocess={"sample_tiles": 4})
SLURM_TARGETS = ["results/cohort/patients.parquet", "results/cohort/embedding/metrics.json"]
# segment.shards: one slide's segmentation as 4 GPU shard jobs (one 128 px tile each; the classical
# backend, as the cluster has no GPU and only the scheduling is under test) and one CPU stitch job.
SHARDS = 4
SHARDED_CONFIG = tiny_config(tile={"size": 128}, preprocess={"sample_tiles": 4},
                             segment={"backend": "classical", "shards": SHARDS})
SHARDED_TARGET = "results/P01_S1/labels.zarr"


def in_ci():
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def write_config(workdir, config):
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))


def snakemake(workdir, *args, env=None, timeout=600):
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--profile", str(PROFILE),
               "--workflow-profile", "none", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=workdir, env=env, timeout=timeout)


def load_profile():
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def planned_jobs(output):
    """Rule -> count of the jobs a run planned to submit to SLURM (its "Job stats" table; local rules,
    and `all`, which only collects inputs, are finished on the submit host)."""
    if "Job stats:" not in output:
        return collections.Counter()
    local = {"all", *re.findall(r"^localrule (\w+):", output, re.M)}
    stats = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return collections.Counter({
        rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)\s*$", stats, re.M) if rule not in ("total", *local)
    })


# -- the profile itself (no cluster needed) ---------------------------------------------------------

def workflow_rules(tmp_path):
    write_config(tmp_path, TINY_CONFIG)
    result = subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--list-rules"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return set(result.stdout.split()) - {"all"}


def test_profile_gives_every_rule_resources_that_grow_with_attempt(tmp_path):
    profile = load_profile()
    assert profile["executor"] == "slurm" and profile["retries"] >= 1 and profile["jobs"] >= 1
    per_rule = profile["set-resources"]
    missing = workflow_rules(tmp_path) - set(per_rule)
    assert not missing, (
        f"rules without an entry in profiles/slurm/config.yaml set-resources: {sorted(missing)} "
        "(add cpus_per_task, mem_mb as '<MB> * attempt' and runtime; GPU rules also <<: *gpu)"
    )
    for rule, resources in {"default-resources": profile["default-resources"], **per_rule}.items():
        assert {"mem_mb", "runtime", "cpus_per_task"} <= set(resources), rule
        # the expressions Snakemake evaluates per attempt: a retry asks for more memory
        mem = [eval(str(resources["mem_mb"]), {}, {"attempt": a}) for a in (1, 2, 3)]
        assert mem[0] > 0 and mem[0] < mem[1] < mem[2], (rule, mem)


def test_profile_gives_every_rule_as_many_threads_as_cpus():
    # a job with more threads than CPUs shares its cores; one with fewer leaves booked CPUs idle
    profile = load_profile()
    cpus = {rule: resources["cpus_per_task"] for rule, resources in profile["set-resources"].items()}
    assert profile["set-threads"] == cpus


def test_profile_puts_gpu_rules_on_the_gpu_partition_with_one_gpu():
    per_rule = load_profile()["set-resources"]
    for rule in sorted(GPU_RULES):
        resources = per_rule[rule]
        assert resources["slurm_partition"] == GPU_PARTITION, rule
        assert resources.get("gpu") == 1 or resources.get("gres") == "gpu:1", rule
    for rule in set(per_rule) - GPU_RULES:
        assert "gpu" not in per_rule[rule] and "gres" not in per_rule[rule], rule


def test_dry_run_with_the_profile_applies_its_resources(tmp_path):
    write_config(tmp_path, TINY_CONFIG)
    result = snakemake(tmp_path, "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Using profile" in result.stderr and "workflow specific profile" not in result.stderr, result.stderr
    per_rule = load_profile()["set-resources"]
    blocks = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", result.stdout, re.M)
    assert blocks, result.stdout
    for rule, resources in blocks:
        if rule == "all":
            continue
        expected = per_rule[rule]
        assert f"mem_mb={eval(str(expected['mem_mb']), {}, {'attempt': 1})}," in resources, (rule, resources)
        assert f"runtime={expected['runtime']}," in resources, (rule, resources)


def test_dry_run_splits_segmentation_into_gpu_shard_jobs_and_a_cpu_stitch_job(tmp_path):
    write_config(tmp_path, SHARDED_CONFIG)
    result = snakemake(tmp_path, "--dry-run", SHARDED_TARGET)
    assert result.returncode == 0, result.stdout + result.stderr
    plan = planned_jobs(result.stdout)
    assert plan["segment_shard"] == SHARDS and plan["segment_stitch"] == 1 and "segment" not in plan, plan
    blocks = dict(re.findall(r"^rule (segment_\w+):\n((?:    .*\n)+)", result.stdout, re.M))
    jobs = re.findall(r"^rule (segment_shard|segment_stitch):\n((?:    .*\n)+)", result.stdout, re.M)
    shard_outputs = set()
    for rule, block in jobs:
        resources = re.search(r"^    resources: (.*)$", block, re.M).group(1)
        if rule == "segment_shard":
            assert f"slurm_partition={GPU_PARTITION}" in resources and "gpu=1" in resources, block
            shard_outputs.add(re.search(r"^    output: (\S+)$", block, re.M).group(1))
        else:
            assert "gpu" not in resources and "slurm_partition" not in resources, block
            stitch_inputs = set(re.search(r"^    input: (.*)$", block, re.M).group(1).split(", "))
    assert len(shard_outputs) == SHARDS and shard_outputs <= stitch_inputs, (shard_outputs, blocks)


# -- end to end on a real cluster --------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    reason = slurm_cluster.unavailable_reason()
    if reason:
        message = f"SLURM end-to-end test of profiles/slurm NOT RUN: {reason}"
        if in_ci():
            pytest.fail(f"{message} (CI must run it: run CI as root on a Debian/Ubuntu image)", pytrace=False)
        pytest.skip(f"{message}; CI runs it (as root, with apt-get)")
    started = time.monotonic()
    try:
        cluster = slurm_cluster.SlurmCluster.start()
    except slurm_cluster.ClusterError as err:
        pytest.fail(f"could not start the SLURM test cluster: {err}", pytrace=False)
    cluster.startup_seconds = time.monotonic() - started
    yield cluster
    cluster.stop()


def run_id(output):
    match = re.search(r"SLURM run ID: (\S+)", output)
    assert match, output
    return match.group(1)


def sacct_jobs(cluster, run):
    """The SLURM jobs of one Snakemake run (its run ID is the SLURM job name), as dicts."""
    fields = ["JobIDRaw", "Partition", "AllocTRES", "ReqMem", "State", "ExitCode", "Comment", "Start", "End"]
    out = cluster.run("sacct", "-X", "--parsable2", "--noheader", "--starttime", "now-1days", "--name", run,
                      f"--format={','.join(fields)}").stdout
    jobs = []
    for line in out.splitlines():
        job = dict(zip(fields, line.split("|")))
        rule, _, wildcards = job["Comment"].removeprefix("rule_").partition("_wildcards_")
        job.update(rule=rule, wildcards=wildcards)
        jobs.append(job)
    return jobs


def sacct_table(jobs):
    return "\n".join("|".join(j[k] for k in ("JobIDRaw", "Partition", "AllocTRES", "ReqMem", "State", "Comment"))
                     for j in jobs)


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm_run")
    write_config(workdir, TINY_CONFIG)
    started = time.monotonic()
    result = snakemake(workdir, *TEST_CLUSTER_ARGS, *SLURM_TARGETS, env=cluster.env())
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"snakemake under SLURM failed:\n{output}\n{cluster.log_tails()}"
    print(f"SLURM cluster start {cluster.startup_seconds:.0f} s, workflow under SLURM {seconds:.0f} s")
    return workdir, output, planned_jobs(output)


@pytest.mark.slow
@pytest.mark.slurm
def test_every_job_runs_through_slurm_and_gpu_rules_get_a_gpu(cluster, slurm_run):
    workdir, output, plan = slurm_run
    jobs = sacct_jobs(cluster, run_id(output))
    table = sacct_table(jobs)
    print(table)
    assert collections.Counter(j["rule"] for j in jobs) == plan, f"planned {dict(plan)}, sacct shows:\n{table}"
    assert all(j["State"] == "COMPLETED" and j["ExitCode"] == "0:0" for j in jobs), table
    for job in jobs:
        if job["rule"] in GPU_RULES:
            assert job["Partition"] == GPU_PARTITION and "gres/gpu=1" in job["AllocTRES"], table
        else:
            assert job["Partition"] == CPU_PARTITION and "gres/gpu" not in job["AllocTRES"], table
    assert GPU_RULES & set(plan), (
        f"the workflow has no GPU rule yet ({sorted(GPU_RULES)}), so the GPU partition went untested:\n{table}"
    )
    # the workflow's outputs are there, and each job's SLURM log was kept where the plugin said
    for slide in ("P01_S1", "P02_S1"):
        assert (workdir / "results" / slide / "preprocessed.zarr").is_dir()
    logs = list((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert len(logs) == len(jobs), logs


@pytest.mark.slow
@pytest.mark.slurm
def test_failed_job_names_its_slurm_log_is_retried_with_more_memory_and_a_rerun_resumes(
    cluster, slurm_run, tmp_path
):
    """Real slides (frame folders) with one unreadable frame: that slide's tile job fails.

    The runs stop at tile (explicit targets): every stage costs about half a minute on the test
    cluster, and the tile stage alone shows the failure, the retries and the resume."""
    source, _, _ = slurm_run
    sheet = pd.read_csv(source / "results" / "synthetic" / "samples.tsv", sep="\t", dtype=str, keep_default_na=False)
    for i, row in sheet.iterrows():
        copy = tmp_path / "slides" / row["slide"]
        shutil.copytree(source / row["path"], copy)
        sheet.loc[i, "path"] = str(copy)
    sheet.to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    config = {k: v for k, v in TINY_CONFIG.items() if k != "synthetic"}
    write_config(tmp_path, {**config, "synthetic": {"enabled": False}, "samples": str(tmp_path / "samples.tsv")})
    bad_slide = "P02_S1"
    good_slides = set(sheet["slide"]) - {bad_slide}
    frame = sorted((tmp_path / "slides" / bad_slide).rglob("*.tif"))[0]
    good_bytes = frame.read_bytes()
    frame.write_bytes(b"this is not a TIFF")
    env = cluster.env()
    targets = [f"results/{slide}/image.zarr" for slide in sheet["slide"]]

    # 1. the run fails, names the failed job's SLURM log, and finishes the other slides
    result = snakemake(tmp_path, *TEST_CLUSTER_ARGS, *targets, env=env)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    errors = re.findall(r"^Error in rule tile:\n((?:    .*\n)+)", output, re.M)
    assert errors, output
    # Snakemake's own error block names the SLURM log; with show-failed-logs the failed job's log follows,
    # and it holds the job's inner error blocks (which name only the rule log), so look at every block
    slurm_log = r"^    log: .*?(/\S*/\.snakemake/slurm_logs/rule_tile/" + bad_slide + r"/\d+\.log)"
    log = next((m for m in (re.search(slurm_log, block, re.M) for block in errors) if m), None)
    assert log, f"no error report names a SLURM log:\n{errors}\n--- snakemake output ---\n{output[-8000:]}"
    assert Path(log.group(1)).is_file() and "Error" in Path(log.group(1)).read_text(), log.group(1)
    jobs = sacct_jobs(cluster, run_id(output))
    table = sacct_table(jobs)
    print(table)
    failed = [j for j in jobs if j["State"] != "COMPLETED"]
    retries = load_profile()["retries"]
    assert {(j["rule"], j["wildcards"], j["State"]) for j in failed} == {("tile", bad_slide, "FAILED")}, table
    assert len(failed) == 1 + retries, table
    memory = [int(re.match(r"\d+", j["ReqMem"]).group()) for j in sorted(failed, key=lambda j: int(j["JobIDRaw"]))]
    assert memory == sorted(memory) and len(set(memory)) == len(memory), f"memory did not grow per attempt:\n{table}"
    done = {(j["rule"], j["wildcards"]) for j in jobs if j["State"] == "COMPLETED"}
    assert done == {("tile", slide) for slide in good_slides}, table

    # 2. with the input fixed, a rerun submits only what is missing: the failed slide's job
    frame.write_bytes(good_bytes)
    result = snakemake(tmp_path, *TEST_CLUSTER_ARGS, *targets, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    jobs = sacct_jobs(cluster, run_id(output))
    table = sacct_table(jobs)
    print(table)
    assert collections.Counter(j["rule"] for j in jobs) == planned_jobs(output), table
    assert {j["wildcards"] for j in jobs} == {bad_slide} and {j["State"] for j in jobs} == {"COMPLETED"}, table
    assert (tmp_path / "results" / bad_slide / "image.zarr").is_dir()


@pytest.mark.slow
@pytest.mark.slurm
def test_segmentation_shards_run_as_parallel_gpu_jobs_and_the_stitch_waits_for_them(cluster, tmp_path):
    write_config(tmp_path, SHARDED_CONFIG)
    result = snakemake(tmp_path, *TEST_CLUSTER_ARGS, SHARDED_TARGET, env=cluster.env())
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"sharded segmentation under SLURM failed:\n{output}\n{cluster.log_tails()}"
    jobs = sacct_jobs(cluster, run_id(output))
    table = sacct_table(jobs) + "\n" + "\n".join(f"{j['rule']} {j['wildcards']} {j['Start']} {j['End']}" for j in jobs)
    print(table)
    shards = [j for j in jobs if j["rule"] == "segment_shard"]
    stitch = [j for j in jobs if j["rule"] == "segment_stitch"]
    assert len(shards) == SHARDS and len(stitch) == 1 and all(j["State"] == "COMPLETED" for j in jobs), table
    for job in shards:
        assert job["Partition"] == GPU_PARTITION and "gres/gpu=1" in job["AllocTRES"], table
    assert stitch[0]["Partition"] == CPU_PARTITION and "gres/gpu" not in stitch[0]["AllocTRES"], table
    # four separate SLURM jobs, and the stitch started only once the last shard had ended
    assert len({j["JobIDRaw"] for j in shards}) == SHARDS, table
    assert stitch[0]["Start"] >= max(j["End"] for j in shards), table  # ISO timestamps compare as text
    assert (tmp_path / SHARDED_TARGET).is_dir() and not list((tmp_path / "results" / "P01_S1").glob("segment_shards/*"))
