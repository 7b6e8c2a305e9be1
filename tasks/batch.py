"""Batch workflows: tasks that run as Slurm or HTCondor jobs through law.contrib.

``--workflow local`` (the default) runs in the current process. ``--workflow slurm`` or
``--workflow htcondor`` submits jobs and polls them with law's own parameters
(``--poll-interval``, ``--retries``, ``--walltime``, ``--parallel-jobs``, ``--slurm-partition``,
``--htcondor-pool``, ...). A job sources :data:`bhive.batch.BOOTSTRAP` from the shared file
system and runs its branch with ``law run`` there, into the same store. b-hive adds what a job
asks for: ``--cpus`` (also the job's ``--processes`` and thread count), ``--memory``,
``--gpus`` and, for lxplus, ``--htcondor-flavour``; law.cfg can set defaults for them per task
(``[luigi_TrainingTask]`` with ``gpus: 1``).

- :class:`BatchWorkflow`: a law workflow, one job per branch (``DatasetPiecesTask``).
- :class:`SingleJobWorkflow`: a task that goes to the batch system as one job and is otherwise
  the plain task it was (``SimulatedSamplesTask``, ``TrainingTask``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import law
import luigi

from bhive import batch
from bhive.store import store_root

law.contrib.load("htcondor", "slurm")

#: below a task's output directory: job data and logs, one directory per batch system
JOBS_DIRECTORY = "jobs"
#: what law's job script appends every line of a job's output to (and names in error messages)
JOB_LOG = "stdall.txt"

_WORKFLOWS = (law.LocalWorkflow, law.slurm.SlurmWorkflow, law.htcondor.HTCondorWorkflow)
_JOB_PARAMETERS = frozenset({"cpus", "memory", "gpus", "htcondor_flavour"})
# parameters of law's workflows: never handed from one task to another by req(), so that a
# workflow requiring another passes on neither its branch nor its batch settings (each task
# takes its own, e.g. --SimulatedSamplesTask-workflow slurm); ExportTask's --tolerance is not
# law's --tolerance either
_WORKFLOW_PARAMETERS = frozenset(
    name for workflow in _WORKFLOWS for name, _ in workflow.get_params()
) - {name for name, _ in law.Task.get_params()}


class BatchWorkflow(*_WORKFLOWS):
    """A law workflow that runs locally, on Slurm or on HTCondor (``--workflow``)."""

    cpus = luigi.IntParameter(default=1, significant=False,
                              description="batch jobs: cores per job, also its --processes and thread count; default: 1")
    memory = luigi.Parameter(default="", significant=False,
                             description="batch jobs: memory per job, e.g. 4GB; default: the batch system's")
    gpus = luigi.IntParameter(default=0, significant=False, description="batch jobs: GPUs per job; default: 0")
    htcondor_flavour = luigi.Parameter(default="", significant=False,
                                       description="HTCondor on lxplus: +JobFlavour, e.g. workday; default: none")

    exclude_index = True
    exclude_params_branch = set(_JOB_PARAMETERS)
    exclude_params_req_get = set(_WORKFLOW_PARAMETERS | _JOB_PARAMETERS)
    # law shows the requested --workflow already
    exclude_params_repr = {"effective_workflow"}

    def jobs_directory(self) -> Path:
        """Where law keeps the submission data and the logs of this task's jobs."""
        return self.output_directory() / JOBS_DIRECTORY

    def job_resources(self) -> batch.JobResources:
        return batch.JobResources(cpus=self.cpus, memory_mb=batch.parse_memory(self.memory), gpus=self.gpus,
                                  walltime_s=batch.walltime_seconds(self.walltime),
                                  flavour=self.htcondor_flavour or None)

    # -- what law asks both batch systems for -----------------------------------------------

    def _output_directory(self, workflow_type: str) -> law.LocalDirectoryTarget:
        return law.LocalDirectoryTarget(str(self.jobs_directory() / workflow_type))

    def _bootstrap_file(self) -> law.JobInputFile:
        # one copy for all jobs, its placeholders filled in by each job (law_job.sh)
        return law.JobInputFile(str(batch.BOOTSTRAP), share=True, render_job=True)

    def _job_file_factory_arguments(self, workflow_type: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        # job files must be where the nodes can read them: in the store, unless law.cfg says
        # otherwise (law's own default is the submitting machine's /tmp)
        config = law.config.Config.instance()
        if kwargs.get("dir") is None and not config.get_expanded("job", f"{workflow_type}_job_file_dir", None):
            kwargs["dir"] = str(store_root() / ".jobs")
        return kwargs

    def _job_config(self, config, directives: list[tuple[str, str]]):
        config.render_variables.update(batch.bootstrap_variables(threads=self.cpus))
        config.custom_content.extend(directives)
        config.custom_log_file = config.custom_log_file or JOB_LOG
        return config

    def _job_cmdline_args(self) -> dict[str, str]:
        # a job uses the cores it asked for, not as many as the submitting machine has
        return {"--processes": str(self.cpus)} if "processes" in self.param_kwargs else {}

    # -- Slurm ----------------------------------------------------------------------------

    def slurm_output_directory(self) -> law.LocalDirectoryTarget:
        return self._output_directory("slurm")

    def slurm_bootstrap_file(self) -> law.JobInputFile:
        return self._bootstrap_file()

    def slurm_create_job_file_factory(self, **kwargs):
        return super().slurm_create_job_file_factory(**self._job_file_factory_arguments("slurm", kwargs))

    def slurm_job_config(self, config, job_num, branches):
        # what a job prints before law's job script starts its log, e.g. a bootstrap failure
        config.stdout = config.stderr = "slurm.txt"
        return self._job_config(config, batch.slurm_directives(self.job_resources()))

    def slurm_cmdline_args(self) -> dict[str, str]:
        return self._job_cmdline_args()

    # -- HTCondor -------------------------------------------------------------------------

    def htcondor_output_directory(self) -> law.LocalDirectoryTarget:
        return self._output_directory("htcondor")

    def htcondor_bootstrap_file(self) -> law.JobInputFile:
        return self._bootstrap_file()

    def htcondor_create_job_file_factory(self, **kwargs):
        return super().htcondor_create_job_file_factory(**self._job_file_factory_arguments("htcondor", kwargs))

    def htcondor_job_config(self, config, job_num, branches):
        return self._job_config(config, batch.htcondor_directives(self.job_resources()))

    def htcondor_cmdline_args(self) -> dict[str, str]:
        return self._job_cmdline_args()


# what law hands to the workflow proxy of a workflow instance, but a single job keeps
_OWN_ATTRIBUTES = frozenset({"requires", "output", "complete"})


class SingleJobWorkflow(BatchWorkflow):
    """A task that the batch system runs as one job: a workflow with a single branch whose
    output, identity and lock are the task's own.

    law hands ``requires()``, ``output()``, ``complete()`` and ``run()`` of a workflow instance
    to its workflow proxy. Here the first three stay the task's own, so that downstream tasks,
    the identity check (upstream first) and law's ``--print-status`` see this task exactly as
    before; ``run()`` goes to the proxy, which submits the job and polls it, only for a batch
    system: ``--workflow local`` runs the task in this process, as before. The job itself runs
    branch 0, the same task with ``--branch 0``, which holds the lock and records the identity.
    """

    exclude_index = True

    def create_branch_map(self) -> dict[int, None]:
        return {0: None}

    def __getattribute__(self, attr: str, proxy: bool | None = None) -> Any:
        if attr in _OWN_ATTRIBUTES or (attr == "run" and getattr(self, "effective_workflow", "local") == "local"):
            proxy = False
        return super().__getattribute__(attr, proxy=proxy)
