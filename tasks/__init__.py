"""law tasks of b-hive.

Each module here defines the tasks of one pipeline stage. Tasks stay thin: parameters,
``requires()``, ``output()``, and a ``run()`` that calls into :mod:`bhive`. A new module is
listed under ``[modules]`` in ``law.cfg`` so that ``law index`` (run by ``setup.sh``) finds
its tasks.
"""
