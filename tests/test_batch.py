"""Batch workflows without a batch system: job resources, the job files law would submit to
Slurm and HTCondor, a rendered HTCondor job run as a node would run it, and single-job tasks
that stay the plain tasks they were for everything but submission."""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import luigi
import pytest
import yaml
from law.job.dashboard import NoJobDashboard
from law.task.interactive import print_task_status

from bhive import batch
from bhive.identity import VersionConflictError
from bhive.store import stable_hash
from tasks.dataset import DatasetPiecesTask
from tasks.export import ExportTask
from tasks.simulation import SimulatedSamplesTask
from tasks.training import TrainingTask
from tests.batch_helpers import build
from tests.test_tasks import config_dir  # noqa: F401  (fixture: tiny simulated config "tiny")

# what a batch node's job starts with
NODE_PATH = "/usr/bin:/bin"


# -- resources and the bootstrap ------------------------------------------------------------

@pytest.mark.parametrize(("text", "megabytes"), [("4GB", 4096), ("4G", 4096), ("4000MB", 4000), ("512M", 512),
                                                 ("2000", 2000), ("1.5 GiB", 1536), ("", None)])
def test_memory_sizes(text, megabytes):
    assert batch.parse_memory(text) == megabytes


@pytest.mark.parametrize("text", ["4 apples", "GB", "-1GB"])
def test_unreadable_memory_is_refused_naming_the_flag(text):
    with pytest.raises(batch.BatchError, match="--memory"):
        batch.parse_memory(text)


def test_resources_as_slurm_and_htcondor_ask_for_them():
    resources = batch.JobResources(cpus=4, memory_mb=8192, gpus=1, walltime_s=batch.walltime_seconds(26.5),
                                   flavour="tomorrow")
    assert batch.slurm_directives(resources) == [("cpus-per-task", "4"), ("mem", "8192M"), ("gres", "gpu:1"),
                                                 ("time", "1-02:30:00")]
    assert batch.htcondor_directives(resources) == [
        ("request_cpus", "4"), ("request_memory", "8192"), ("request_gpus", "1"), ("+MaxRuntime", "95400"),
        ("+JobFlavour", '"tomorrow"')]
    # unset: the batch system's defaults
    assert batch.slurm_directives(batch.JobResources()) == [("cpus-per-task", "1")]
    assert batch.walltime_seconds(-1.0) is None
    with pytest.raises(batch.BatchError, match="--htcondor-flavour"):
        batch.JobResources(flavour="weekend")


def test_bootstrap_gets_absolute_quoted_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BHIVE_STORE", "my store")
    monkeypatch.setenv("BHIVE_CONFIG_DIR", "configs")
    monkeypatch.setenv("BHIVE_PLUGIN_PATH", f"plugins{os.pathsep}/opt/group")
    monkeypatch.delenv("LAW_CONFIG_FILE", raising=False)
    variables = batch.bootstrap_variables(threads=3)
    assert shlex.split(variables["bhive_store"]) == [str(tmp_path / "my store")]
    assert shlex.split(variables["bhive_config_dir"]) == [str(tmp_path / "configs")]
    assert shlex.split(variables["bhive_plugin_path"]) == [f"{tmp_path / 'plugins'}{os.pathsep}/opt/group"]
    assert shlex.split(variables["law_config_file"]) == [str(batch.REPOSITORY / "law.cfg")]
    assert variables["bhive_threads"] == "3"
    rendered = batch.render_bootstrap(variables)
    assert "{{" not in rendered
    assert subprocess.run(["bash", "-n"], input=rendered, text=True).returncode == 0


# -- single-job tasks -------------------------------------------------------------------------

def training(**parameters) -> TrainingTask:
    return TrainingTask(config="hlt_ak4", version="v1", model_name="DNN", **parameters)


def test_a_single_job_task_is_the_plain_task_on_every_workflow(store):
    local, on_slurm = training(), training(workflow="slurm")
    job = on_slurm.as_branch(0)
    for task in (on_slurm, job):
        assert task.requires() == local.requires()
        assert task.output()["model"].path == local.output()["model"].path
        assert task.identity() == local.identity()
        assert task.output_directory() == local.output_directory()
    assert on_slurm.branch_map == {0: None}
    # run() is the task's own where it runs here, the workflow proxy's where it submits
    assert local.run.__func__ is TrainingTask.run
    assert job.run.__func__ is TrainingTask.run
    assert type(on_slurm.run.__self__).__name__ == "SlurmWorkflowProxy"
    assert on_slurm.jobs_directory() == local.output_directory() / "jobs"
    # downstream, a training submitted to a batch system is the same input as a local one
    export = ExportTask(config="hlt_ak4", version="v1", model_name="DNN")
    assert export.identity()["input.training"] == stable_hash(on_slurm.identity())


def test_job_settings_default_to_the_configuration(store):
    # what law.cfg's [luigi_TrainingTask] section becomes
    configuration = luigi.configuration.get_config()
    configuration.add_section("TrainingTask")
    try:
        configuration.set("TrainingTask", "gpus", "1")
        configuration.set("TrainingTask", "memory", "16GB")
        resources = training(workflow="slurm").job_resources()
        assert (resources.gpus, resources.memory_mb) == (1, 16384)
    finally:
        configuration.remove_section("TrainingTask")


def test_requirements_take_neither_branch_nor_batch_settings(store):
    pieces = DatasetPiecesTask(config="hlt_ak4", version="v1", files_per_job=1, workflow="slurm", branch=1, cpus=4,
                               retries=0, memory="8GB")
    simulation = pieces.requires()["simulation"]
    assert (simulation.branch, simulation.workflow, simulation.cpus, simulation.retries) == (-1, "local", 1, 5)
    assert simulation.memory == ""
    # ExportTask's --tolerance is the ONNX check's, not law's tolerance for failed jobs
    export = ExportTask(config="hlt_ak4", version="v1", model_name="DNN", tolerance=1e-4)
    assert export.requires()["training"].tolerance == 0.0


def test_workflow_instance_checks_the_identity_and_shows_its_outputs(config_dir, store, capsys):  # noqa: F811
    assert build(SimulatedSamplesTask(config="tiny", version="v1", split="test"))
    on_condor = SimulatedSamplesTask(config="tiny", version="v1", split="test", workflow="htcondor")
    assert on_condor.complete()
    print_task_status(on_condor, 0)
    status = capsys.readouterr().out
    assert str(on_condor.local_path("manifest.json")) in status and "existent" in status

    changed = yaml.safe_load((config_dir / "tiny.yml").read_text())
    changed["simulate"]["npv_mean"] = 20.0
    (config_dir / "tiny.yml").write_text(yaml.safe_dump(changed, sort_keys=False))
    with pytest.raises(VersionConflictError, match="--dataset-version"):
        SimulatedSamplesTask(config="tiny", version="v1", split="test", workflow="htcondor").complete()


# -- the job files law submits ----------------------------------------------------------------

def render_jobs(task, jobs: dict[int, list[int]]) -> list[dict]:
    """The job files law writes for ``jobs`` (job number -> branches), without submitting."""
    proxy = task.workflow_proxy
    with luigi.cmdline_parser.CmdlineParser.global_instance([task.task_family]):
        proxy.job_file_factory = proxy.create_job_file_factory()
        proxy.dashboard = NoJobDashboard()
        if proxy.job_manager.job_grouping_submit:
            return [proxy.create_job_file(jobs)]
        return [proxy.create_job_file(number, branches) for number, branches in jobs.items()]


def job_arguments(encoded: str) -> str:
    return base64.b64decode(encoded).decode()


def rendered_variables(job_script: Path) -> dict[str, str]:
    """The values law's job script fills into the bootstrap on the node."""
    for line in job_script.read_text().splitlines():
        if line.strip().startswith("local render_variables="):
            return json.loads(base64.b64decode(line.split('"')[1]))
    raise AssertionError(f"no render variables in {job_script}")


def test_slurm_job_files(config_dir, store):  # noqa: F811
    task = DatasetPiecesTask(config="tiny", version="v1", files_per_job=2, workflow="slurm", cpus=2, memory="3GB",
                             gpus=2, walltime="90m", slurm_partition="gpu")
    first, second = render_jobs(task, {1: [0], 2: [1]})
    script = Path(first["job"]).read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --cpus-per-task=2", "#SBATCH --mem=3072M",
                 "#SBATCH --gres=gpu:2", "#SBATCH --time=0-01:30:00",
                 f"#SBATCH --chdir={task.jobs_directory() / 'slurm'}"):
        assert line in script
    assert Path(first["job"]).parent.parent == store.resolve() / ".jobs"
    assert first["log"] == str(task.jobs_directory() / "slurm" / "stdall_0To1.txt")

    executable, module, family, parameters, branches, *_ = script.strip().splitlines()[-1].split()
    assert (module, family, job_arguments(branches)) == ("tasks.dataset", "DatasetPiecesTask", "0")
    parameters = job_arguments(parameters)
    assert "--processes=2" in parameters and "--files-per-job=2" in parameters
    for flag in ("--workflow", "--memory", "--gpus", "--cpus", "--slurm-partition", "--branch="):
        assert flag not in parameters

    variables = rendered_variables(Path(executable))
    assert shlex.split(variables["bhive_store"]) == [str(store.resolve())]
    assert shlex.split(variables["bhive_config_dir"]) == [str(config_dir)]
    assert variables["bhive_threads"] == "2"
    assert Path(variables["bootstrap_file"]).name.startswith("job_bootstrap")
    assert Path(variables["bootstrap_file"]).name in variables["input_files_render"]


@pytest.mark.slow
def test_htcondor_job_runs_on_a_clean_node(config_dir, store, tmp_path):  # noqa: F811
    task = SimulatedSamplesTask(config="tiny", version="v1", split="test", workflow="htcondor", memory="1GB",
                                htcondor_flavour="espresso")
    (job,) = render_jobs(task, {1: [0]})
    description = Path(job["job"]).read_text()
    for line in ("universe = vanilla", "should_transfer_files = YES", "request_cpus = 1", "request_memory = 1024",
                 '+JobFlavour = "espresso"', f"initialdir = {task.jobs_directory() / 'htcondor'}"):
        assert line in description.splitlines()
    assert "request_gpus" not in description and "getenv" not in description

    # the node: a scratch directory holding the transferred files, an environment with PATH and HOME only
    entries = dict(line.split(" = ", 1) for line in description.splitlines() if " = " in line)
    scratch = tmp_path / "node"
    scratch.mkdir()
    for path in entries["transfer_input_files"].split(","):
        shutil.copy(path, scratch)
    queued = description.split("arguments from (", 1)[1].split(")", 1)[0].split()
    postfix = queued[0].rstrip(",")
    arguments = [postfix, queued[2].replace("$(law_job_postfix)", postfix)]
    node = subprocess.run(
        ["env", "-i", f"PATH={NODE_PATH}", f"HOME={os.environ.get('HOME', '/')}", "LAW_HTCONDOR_JOB_CLUSTER=1",
         "LAW_HTCONDOR_JOB_PROCESS=0", "bash", entries["executable"], *arguments],
        cwd=scratch, capture_output=True, text=True, timeout=300)
    log = (scratch / arguments[1]).read_text()
    assert node.returncode == 0, log[-6000:]
    assert "job exit code : 0" in log
    assert task.local_path("manifest.json").exists() and task.complete()
