"""What a model plugin builds on, re-exported from :mod:`bhive.plugins.model`.

A new tagger is one file in ``models/`` (or in a working group's own package listed under
``plugins:`` in its config) with one subclass:

- a PyTorch model subclasses :class:`models.torch_model.TorchModel` and writes ``__init__``
  (layers, sized from the :class:`InputSpec`) and ``forward`` (a dict of standardised tensors
  in, logits out);
- any other library subclasses :class:`Model` and writes ``fit``, ``predict``, ``save`` and
  ``load`` (see ``models/gradient_boosting.py``).
"""

from bhive.plugins.model import (  # noqa: F401
    GROUPS, MODEL_FILE, MODELS, RETRAIN, InputSpec, Model, ModelError, TrainingSettings, check_files, file_records,
    load_model, model_class, read_description, write_description,
)
