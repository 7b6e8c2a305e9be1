"""The training stage: a config's model trained on a dataset (:mod:`~bhive.training.fitting`),
and the PyTorch loop every ``TorchModel`` trains with (:mod:`~bhive.training.loop`)."""

from bhive.training.fitting import (  # noqa: F401
    ARTIFACT, HISTORY, build, check_artifact, loader, plot_history, train, training_settings,
)
from bhive.training.loop import (  # noqa: F401
    TrainingError, TrainingStopped, autocast, fit, learning_rate_factor, load_tensors, resolve_device,
    seed_everything, to_device,
)
