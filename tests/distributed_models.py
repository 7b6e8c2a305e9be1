"""A model that exists for one test: it fails in the second of several training processes.

Importing this module registers it; the test that uses it removes it again, so that tests
iterating over every registered model never meet it.
"""

import torch.distributed as dist

from models.dnn import DNN


class FailsInRankOne(DNN):
    """A DNN whose training forward pass raises in rank 1."""

    def forward(self, batch):
        if self.training and dist.is_initialized() and dist.get_rank() == 1:
            raise ValueError("rank 1 cannot go on")
        return super().forward(batch)
