"""b-hive: the library shared by b-hive's tasks and plugins.

One module (or small package) per concept: the config schema (``config``), the store and
output identities (``store``, ``identity``), the dataset format (``dataset``, ``pieces``),
truth rules and reweighting (``truth``, ``reweighting``), the plugin contracts
(``plugins``), and one home per stage: ``construction`` (ROOT to shards), ``training``,
``inference``, ``export`` (ONNX, checked by ``onnx_check``) and ``evaluation``, and for
deployment ``onnx_io`` (a graph's tensors and metadata), ``profiling``, ``triton`` and
``package``; plus the metrics (``roc``,
``discriminators``), plotting and the simulated default sample (``simulation``).
Dependencies point one way: tasks -> plugin packages -> bhive; nothing in ``bhive`` imports
``tasks`` or a plugin package.
"""

__version__ = "0.1.0"
