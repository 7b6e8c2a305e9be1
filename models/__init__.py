"""Model plugins: one file per model family, registered by class name.

``models.base`` holds the framework-agnostic base class, ``models.torch_model`` the PyTorch
base with the training loop. Importing this package registers the shipped models.
"""

from models.deepjet import DeepJet  # noqa: F401
from models.dnn import DNN  # noqa: F401
from models.gradient_boosting import GradientBoosting  # noqa: F401
from models.particle_transformer import ParticleTransformer  # noqa: F401
from models.particlenet import ParticleNet  # noqa: F401
