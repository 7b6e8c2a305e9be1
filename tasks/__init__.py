"""law tasks of b-hive.

Each module here defines the tasks of one pipeline stage. Tasks stay thin: parameters,
``requires()``, ``output()``, and a ``run()`` that calls into :mod:`bhive`. A new module is
listed under ``[modules]`` in ``law.cfg`` so that ``law index`` (run by ``setup.sh``) finds
its tasks.
"""

# Every law process, batch jobs included, knows every task: a job runs one task's module, but
# its command line carries the parameters of other tasks given when it was submitted
# (--DatasetPiecesTask-workflow slurm, ...), and luigi refuses those of a task it does not know.
from tasks import dataset, evaluation, export, simulation, training  # noqa: E402,F401
