"""Every rank stops by itself when one rank fails, seen with ranks torchrun does not manage.

Under torchrun a rank that fails gets the others killed, so "every rank stopped" cannot tell a
coordinated stop from a rank left waiting in a collective. Here two plain Python processes form the
process group themselves (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, as a cluster launcher sets
them) and each must exit on its own. This file is also the ranks' program:

    RANK=0 WORLD_SIZE=2 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29932 \\
        python tests/test_ranks_stop.py batch|update|hang MODEL_DIR DATA.jsonl
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PORT = 29932
DEADLINE_S = 180  # both ranks start Python, torch and transformers (~5-30 s on a busy 2-core machine)
BAD_ROW = 1  # the dataset row rank 1 asks for (rank r takes row r)
TIMEOUT_MINUTES = 1.0  # the process group's timeout (--dist-timeout-minutes): well inside the deadline
HANG_TIMEOUT_MINUTES = 0.05  # 3 s: the timeout the "hang" ranks run with (minutes, a float, as the flag takes)


def rank_main(what, model_dir, train_file):
    """One rank: join the group, then fetch this rank's row as train_grpo.main fetches its prompts
    ("batch"), run update_policy with rank 1 failing inside its loop ("update"), or wait in an all-reduce
    that rank 1 never joins: it hangs, alive, its connections open ("hang")."""
    sys.path.insert(0, str(REPO))
    import torch

    import common

    if what == "hang":
        rank, _, _ = common.setup_distributed(timeout_minutes=HANG_TIMEOUT_MINUTES)
        if rank == 1:
            time.sleep(DEADLINE_S)  # hung (a deadlock, a stuck file system): alive, never reaching the collective
        start = time.monotonic()
        try:
            torch.distributed.all_reduce(torch.ones(1))
        finally:
            print(f"rank {rank}: left the all-reduce after {time.monotonic() - start:.1f} s", flush=True)
        return
    from transformers import AutoProcessor

    import model as modeling
    import data

    rank, _, device = common.setup_distributed(timeout_minutes=TIMEOUT_MINUTES)
    processor = AutoProcessor.from_pretrained(model_dir)
    if what == "batch":
        dataset = data.PromptDataset(train_file, processor, min_pixels=56 * 56, max_pixels=112 * 112)
        data.get_batch_on_every_rank(dataset, [rank])  # rank 1's image is truncated: every rank must stop here
        print(f"rank {rank}: got its batch")  # not reached
        torch.distributed.barrier()  # the next collective, as the trainer's next phase would be
        return
    import dist_update_check as upd  # this folder: the prompts and samples of the update tests
    import train_grpo

    encoded, samples, _, _ = upd.make_inputs(rank, processor, train_file)
    policy = modeling.load_model(model_dir, device, trainable=True)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    forwards = 0

    def fail_on_the_second_micro_batch(module, args, output):
        nonlocal forwards
        forwards += 1
        if forwards == 2:  # rank 0 is inside the same forward's collectives by now
            raise RuntimeError("rank 1 fails inside the update")

    if rank == 1:
        policy.model.language_model.layers[1].register_forward_hook(fail_on_the_second_micro_batch)
    cfg = train_grpo.Config(**{**upd.BASE, "loss_agg": "token", "kl_coef": 0.0})
    train_grpo.update_policy(policy, optimizer, samples, encoded, None, None, cfg, processor.tokenizer.pad_token_id,
                             device, 1, 0)
    print(f"rank {rank}: finished the update")  # not reached


def run_two_ranks(what, model_dir, train_file, tmp_path, must_exit=(0, 1)):
    """Start both ranks; wait until the ranks `must_exit` have exited or DEADLINE_S passed (then fail); kill
    what still runs. Returns [(exit code, stdout, stderr)] per rank (code None: killed here)."""
    env = {**os.environ, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(PORT), "OMP_NUM_THREADS": "1"}
    logs = [(tmp_path / f"{what}{r}.out", tmp_path / f"{what}{r}.err") for r in range(2)]  # files: no pipe to fill
    cmd = [sys.executable, __file__, what, str(model_dir), str(train_file)]
    start = time.monotonic()
    ranks = []
    for r, (out, err) in enumerate(logs):
        with open(out, "w") as stdout, open(err, "w") as stderr:
            ranks.append(subprocess.Popen(cmd, cwd=REPO, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                                          stdout=stdout, stderr=stderr))
    ended = [None, None]  # seconds from the start to each rank's exit
    try:
        while any(ended[r] is None for r in must_exit) and time.monotonic() - start < DEADLINE_S:
            for r, proc in enumerate(ranks):
                if ended[r] is None and proc.poll() is not None:
                    ended[r] = time.monotonic() - start
            time.sleep(0.1)
    finally:
        codes = [proc.poll() for proc in ranks]
        for proc in ranks:  # only the processes this test started
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    hung = [r for r in must_exit if ended[r] is None]
    assert not hung, f"rank(s) {hung} still running {DEADLINE_S} s after the start (exits at {ended} s): " \
                     f"left waiting in a collective, or stuck"
    return [(code, out.read_text(), err.read_text()) for code, (out, err) in zip(codes, logs)]


def test_a_broken_row_on_one_rank_stops_every_rank_by_itself(tiny_model_dir, demo_dir, tmp_path):
    """Broken: a row that fails on one rank (a truncated image) ends that rank while the other waits in
    a collective forever, or the other rank ends without saying which row of which file to fix."""
    import data
    data_dir = tmp_path / "data"
    shutil.copytree(demo_dir, data_dir)
    rows = (data_dir / "train.jsonl").read_text().splitlines()
    image = data_dir / json.loads(rows[BAD_ROW])["images"][0]
    image.write_bytes(image.read_bytes()[:100])  # the header survives, so the row passes the load-time checks
    where = f"train.jsonl:{BAD_ROW + 1}: cannot use image"
    for r, (code, stdout, stderr) in enumerate(run_two_ranks("batch", tiny_model_dir, data_dir / "train.jsonl",
                                                             tmp_path)):
        assert code != 0, f"rank {r} exited 0:\n{stderr[-2000:]}"
        assert where in stderr and data.SKIP_HINT in stderr, f"rank {r} did not name the row:\n{stderr[-3000:]}"
        assert "got its batch" not in stdout


def test_a_rank_failing_inside_the_update_does_not_leave_the_other_waiting(tiny_model_dir, demo_dir, tmp_path):
    """Broken: a rank that dies inside update_policy (here an exception in its second forward) leaves
    the other rank waiting in FSDP's collectives for good, instead of ending it within
    --dist-timeout-minutes (docs/reliability.md, "A rank dies or hangs"; on one host gloo ends it at once)."""
    (code0, stdout0, stderr0), (code1, _, stderr1) = run_two_ranks("update", tiny_model_dir,
                                                                   demo_dir / "train.jsonl", tmp_path)
    assert code1 != 0 and "rank 1 fails inside the update" in stderr1, stderr1[-3000:]
    assert code0 != 0, f"rank 0 exited 0:\n{stderr0[-3000:]}"
    assert "finished the update" not in stdout0



def test_a_hung_rank_ends_the_others_within_the_timeout(tmp_path):
    """Broken: a rank that hangs alive (its connections open, so no error reaches the others) leaves them
    waiting in a collective for good, instead of ending them with a timeout error after
    --dist-timeout-minutes (setup_distributed's timeout, here 0.05 minutes: docs/reliability.md, "A rank
    dies or hangs on another node")."""
    (code0, stdout0, stderr0), (code1, _, _) = run_two_ranks("hang", None, None, tmp_path, must_exit=(0,))
    assert code1 is None  # rank 1 was still hanging when rank 0 had ended
    assert code0 not in (0, None) and "Timed out" in stderr0, stderr0[-3000:]
    waited = float(stdout0.split("left the all-reduce after ")[1].split(" s")[0])
    assert HANG_TIMEOUT_MINUTES * 60 * 0.9 <= waited < HANG_TIMEOUT_MINUTES * 60 + 20, waited  # the timeout ended it


if __name__ == "__main__":
    rank_main(*sys.argv[1:4])
