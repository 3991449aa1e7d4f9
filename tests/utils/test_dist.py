"""``utils.dist``: more torchrun processes than GPUs is a clear error before any CUDA call."""
import pytest
import torch

from utils.errors import UserError


def test_more_torchrun_processes_than_gpus_is_a_clear_error(monkeypatch):
    """torchrun --nproc_per_node 2 on a one-GPU machine: a message that
    says what to change, before any CUDA call can fail with "invalid device ordinal"."""
    from utils import dist as d

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device",
                        lambda i: pytest.fail("set_device reached with a rank past the GPUs"))
    with pytest.raises(UserError, match="--nproc_per_node 1 or fewer, or --device cpu"):
        d.init_distributed("cuda")
