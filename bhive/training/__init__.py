"""The training stage: a config's model trained on a dataset (:mod:`~bhive.training.fitting`),
the PyTorch loop every ``TorchModel`` trains with (:mod:`~bhive.training.loop`), and the same
loop on several processes (:mod:`~bhive.training.distributed`, :mod:`~bhive.training.launcher`)."""

from bhive.training.fitting import (  # noqa: F401
    ARTIFACT, HISTORY, build, check_artifact, loader, plot_history, train, train_here, training_settings,
)
from bhive.training.loop import (  # noqa: F401
    CHECKPOINT, TrainingError, TrainingInterrupted, TrainingStopped, autocast, fit, learning_rate_factor, load_tensors,
    resolve_device, seed_everything, to_device,
)
