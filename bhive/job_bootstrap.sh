#!/usr/bin/env bash
# Sourced at the start of every b-hive batch job: by law's job script on Slurm and HTCondor,
# and by dask worker jobs started with dask-jobqueue. The repository, the Python environment
# and the store are on a file system the nodes share with the submitting machine; the values
# below, filled in from the submitting process (bhive/batch.py: bootstrap_variables), make the
# job run the same code in the same environment on the same configs into the same store.
# Values arrive shell-quoted; empty ones were not set when the job was submitted.

export BHIVE_STORE={{bhive_store}}
# setup.sh activates this environment and, in a job, never installs into it
export BHIVE_JOB_ENV={{bhive_python_env}}
_bhive_job_value={{bhive_config_dir}}
[ -z "${_bhive_job_value}" ] || export BHIVE_CONFIG_DIR="${_bhive_job_value}"
_bhive_job_value={{bhive_plugin_path}}
[ -z "${_bhive_job_value}" ] || export BHIVE_PLUGIN_PATH="${_bhive_job_value}"
unset _bhive_job_value
# as many threads (torch, numpy) as the job has cores, and the same number in every job
export OMP_NUM_THREADS={{bhive_threads}}
# b-hive is imported from the checkout the submitting process imported it from
export PYTHONPATH={{bhive_repo}}${PYTHONPATH:+:${PYTHONPATH}}

source {{bhive_repo}}/setup.sh || return 1
export LAW_CONFIG_FILE={{law_config_file}}
