"""Run under torchrun (2 ranks): tests/dist_precision_check.py and tests/dist_sync_check.py in one launch,
one start-up of torch, transformers and vLLM instead of two (about half a minute each on 2 CPU cores).
The precision check goes first, so nothing the vLLM engine sets up can touch the bf16 policy it checks.

    torchrun --nproc_per_node 2 tests/dist_sync_and_precision.py MODEL_DIR DATA.jsonl OUT_DIR

Each rank writes OUT_DIR/precision/rank{r}.json and OUT_DIR/sync/rank{r}.json; tests/test_train.py checks them.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch.distributed as dist  # noqa: E402

import common  # noqa: E402
import dist_precision_check  # noqa: E402
import dist_sync_check  # noqa: E402


def main():
    model_dir, train_file, out_dir = sys.argv[1:4]
    rank, world_size, device = common.setup_distributed()
    for name in ("precision", "sync"):
        Path(out_dir, name).mkdir(parents=True, exist_ok=True)  # every rank: no rank waits on another's mkdir
    dist_precision_check.check(model_dir, train_file, Path(out_dir, "precision"), rank, world_size, device)
    dist_sync_check.check(model_dir, train_file, Path(out_dir, "sync"), rank, device)
    if dist.is_initialized():  # the vLLM engine's shutdown may already have torn the process groups down
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
