"""train_grpo.py with the weights it pushes into the rollout engine corrupted on purpose (run under
torchrun; tests/test_train.py checks that the log-prob gap guard stops the run: the step "corrupt_sync" of
the suite's shared launch, where tests/dist_runs.py pushes corrupted_weights the same way).

    torchrun --standalone --nproc_per_node 2 tests/dist_corrupt_sync.py TRAINER_FLAGS...

Every pushed tensor gets Gaussian noise of 0.5 x its own standard deviation: the engine then samples
from a different model, as with a sync that silently failed (TRL #5312, NeMo-RL #2631).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rollout  # noqa: E402
import train_grpo  # noqa: E402

full_weights = rollout.full_weights


def corrupted_weights(model):
    generator = torch.Generator().manual_seed(0)
    for name, tensor in full_weights(model):
        noise = torch.randn(tensor.shape, generator=generator).to(tensor.device, tensor.dtype)
        yield name, tensor + 0.5 * tensor.float().std().nan_to_num().item() * noise


if __name__ == "__main__":
    rollout.full_weights = corrupted_weights  # push_policy looks the name up at call time
    train_grpo.main(sys.argv[1:])
    train_grpo.exit_process()  # as train_grpo.py ends
