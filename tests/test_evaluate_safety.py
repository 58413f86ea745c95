"""evaluate.py runs that leave no merged model behind, never overwrite an earlier evaluation by accident,
replace all of it (and nothing else) when told to, and do not time out while rank 0 merges. In-process
where possible (the tiny model, --engine hf, a world of one); the merge wait with two real processes,
since a timeout needs someone to wait."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import evaluate
import export
import report

REPO = Path(__file__).resolve().parents[1]


def evaluate_args(model, data, out, *extra):
    return ["--model", str(model), "--data", str(data), "--names", "demo", "--out", str(out), "--engine", "hf",
            "--max-samples", "2", "--max-response-length", "8", "--min-pixels", "3136", "--max-pixels", "12544",
            "--allow-cpu", *map(str, extra)]


@pytest.fixture
def merges(tiny_model_dir, monkeypatch, tmp_path):
    """A training checkpoint (tmp_path/step_1: evaluate.py knows one by its trainer_state.json) and a
    stand-in for its merge that copies the tiny model, recording where it went: the merge itself is
    export.py's, tested in test_merge_evaluate.py. The temporary folder is pointed under tmp_path,
    so that a merged model left anywhere (the old tempfile.mkdtemp) is found by the test."""
    import torch.distributed as dist
    step = tmp_path / "step_1"
    step.mkdir()
    (step / "trainer_state.json").write_text(json.dumps({"step": 1, "config": {"model": str(tiny_model_dir)}}))
    made = []

    def merge(ckpt, out, **kwargs):
        made.append(Path(out))
        shutil.copytree(tiny_model_dir, out)
    monkeypatch.setattr(export, "export_hf_folder", merge)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    yield step, made
    assert not dist.is_initialized()  # evaluate() ends its process group whatever happened


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_checkpoint_evaluation_leaves_no_merged_model(demo_dir, tmp_path, merges, engine):
    """A checkpoint sweep would fill the disk: every evaluation of a checkpoint left its merged model
    (7.5 GB for a 3B model) in a temporary folder that nothing removed. With vLLM the cleanup must
    wait for the ranks before the engine's shutdown, which tears down the process groups."""
    step, merges = merges
    out = tmp_path / "eval"
    summary = evaluate.main(evaluate_args(step, demo_dir / "test.jsonl", out, "--engine", engine))
    assert "demo" in summary and (out / "demo" / "metrics.json").exists() and (out / "run.json").exists()
    assert merges == [out / ".merged-model" / "model"]  # merged under --out, where every node can read it
    assert not list(tmp_path.rglob("model.safetensors")), "a merged model was left behind"
    assert not (out / ".merged-model").exists()


def test_failed_checkpoint_evaluation_leaves_no_merged_model(tmp_path, merges):
    """An evaluation that fails after the merge (here a --data path that does not exist, read after the
    merge) would leave its merged model behind."""
    step, merges = merges
    out = tmp_path / "eval"
    with pytest.raises(ValueError, match="no such file"):
        evaluate.main(evaluate_args(step, tmp_path / "missing.jsonl", out))
    assert merges == [out / ".merged-model" / "model"]  # it did fail after merging
    assert not list(tmp_path.rglob("model.safetensors")), "a merged model was left behind"
    assert not (out / ".merged-model").exists()


def test_every_data_file_is_read_once(tiny_model_dir, demo_dir, tmp_path, monkeypatch):
    """With vLLM every --data file was read twice: once to learn whether the engine must allow a clip, then
    again to load it (seconds for a 100k-row parquet). The engine must still allow a clip when one benchmark
    of several has them."""
    import data
    import engines
    import tiny
    clips = tiny.make_video_demo_dataset(tmp_path / "clips", num_train=0, num_test=2) / "test.jsonl"
    reads, videos = [], []
    real_read_rows, real_engine = data.read_rows, engines.VLLMEngine

    def read_rows(path, *args, **kwargs):
        reads.append(str(path))
        return real_read_rows(path, *args, **kwargs)

    def engine(*args, **kwargs):
        videos.append(kwargs["videos"])
        return real_engine(*args, **kwargs)
    monkeypatch.setattr(data, "read_rows", read_rows)
    monkeypatch.setattr(engines, "VLLMEngine", engine)
    images = demo_dir / "test.jsonl"
    summary = evaluate.main(evaluate_args(tiny_model_dir, f"{images},{clips}", tmp_path / "eval", "--engine", "vllm",
                                          "--names", "images,clips", "--video-min-pixels", 56 * 56))
    assert set(summary) == {"images", "clips"}
    assert sorted(reads) == sorted([str(images), str(clips)])
    assert videos == [True]


def test_out_holding_an_evaluation_is_refused_without_overwrite(tmp_path, monkeypatch):
    """A second evaluation into the same --out (a typo, a copied command) would silently overwrite the
    first one's predictions and metrics, or mix its benchmarks with the new run.json."""
    started = []
    monkeypatch.setattr(evaluate, "evaluate", started.append)  # stands for loading the model
    args = ["--model", tmp_path / "no-model", "--data", tmp_path / "x.jsonl", "--out", tmp_path / "eval"]
    evaluate.main(list(map(str, args)))  # a new folder: fine
    # what each earlier run left -> what the refusal names
    for left, named in (("run.json", "run.json"), ("emoset/metrics.json", "emoset/metrics.json"),
                        ("emoset/predictions.jsonl", "emoset/predictions.jsonl"),
                        (".merged-model/model/config.json", ".merged-model")):  # a killed (or running) one's merge
        out = tmp_path / left.replace("/", "-")
        (out / left).parent.mkdir(parents=True)
        (out / left).write_text("{}")
        argv = list(map(str, args[:-1] + [out]))
        with pytest.raises(SystemExit, match="already holds an evaluation") as refused:
            evaluate.main(argv)
        assert str(out / named) in str(refused.value) and "--overwrite" in str(refused.value)
        evaluate.main(argv + ["--overwrite"])
    assert len(started) == 5 and [cfg.overwrite for cfg in started] == [False] + [True] * 4
    (tmp_path / "other").mkdir()  # an unrelated folder's files are not an evaluation
    (tmp_path / "other" / "notes.txt").write_text("mine")
    evaluate.main(list(map(str, args[:-1] + [tmp_path / "other"])))


def test_overwrite_replaces_the_whole_evaluation(tiny_model_dir, demo_dir, tmp_path):
    """--overwrite removed only run.json: a benchmark of the earlier evaluation that the new one does not
    write (emotion6 here) stayed, and --table credited its numbers to the new method. Every file of the
    earlier evaluation must go (its benchmarks, a merged model a killed run left, a re-score), and each
    new metrics.json must carry the new run's id, model and method."""
    out, test = tmp_path / "eval", demo_dir / "test.jsonl"
    evaluate.main(evaluate_args(tiny_model_dir, f"{test},{test}", out, "--names", "emoset,emotion6",
                                "--method", "old", "--train-domain", "emoset", "--max-samples", 1))
    old_run = json.loads((out / "run.json").read_text())["run_id"]
    assert json.loads((out / "emotion6" / "metrics.json").read_text())["run_id"] == old_run
    evaluate.main(["--predictions", str(out / "emotion6" / "predictions.jsonl")])  # writes metrics.rescored.json
    (out / ".merged-model" / "model").mkdir(parents=True)  # what a killed checkpoint evaluation leaves
    (out / ".merged-model" / "model" / "config.json").write_text("{}")
    evaluate.main(evaluate_args(tiny_model_dir, test, out, "--names", "emoset", "--method", "new",
                                "--train-domain", "emoset", "--max-samples", 1, "--overwrite"))
    assert sorted(p.name for p in out.iterdir()) == ["emoset", "run.json"]
    assert sorted(p.name for p in (out / "emoset").iterdir()) == sorted(
        set(evaluate.BENCHMARK_FILES) - {"metrics.rescored.json"})
    run = json.loads((out / "run.json").read_text())
    metrics = json.loads((out / "emoset" / "metrics.json").read_text())
    assert run["run_id"] != old_run and metrics["run_id"] == run["run_id"]
    assert (metrics["method"], metrics["model"], metrics["train_domain"]) == ("new", str(tiny_model_dir), "emoset")
    header, table = report.build_table([out], tmp_path / "table")
    assert table == [["new", 100 * metrics["accuracy"], None, None, 100 * metrics["accuracy"], None,
                      100 * metrics["accuracy"]]]  # emotion6 and webemo: "-", in the columns and the means


def test_overwrite_refuses_an_out_holding_files_evaluate_did_not_write(tmp_path):
    """--overwrite would delete a user's own files kept in --out (notes, a plot beside a benchmark's
    files, a folder of analyses), or replace only part of the evaluation, if it did not refuse such an
    --out before touching anything, naming each file."""
    out = tmp_path / "eval"
    for name in ("run.json", "emoset/metrics.json", "emoset/predictions.jsonl", "emotion6/predictions.jsonl",
                 "notes.txt", "emoset/my-plot.png", "analysis/by-class.csv", "emotion6/extra/x.json"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("{}")
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    argv = ["--model", str(tmp_path / "no-model"), "--data", str(tmp_path / "x.jsonl"), "--out", str(out),
            "--overwrite", "--allow-cpu"]
    with pytest.raises(SystemExit) as refused:
        evaluate.main(argv)
    message = str(refused.value.code)
    assert "evaluate.py did not write" in message and "nothing was deleted" in message, message
    named = {str(out / name) for name in ("notes.txt", "emoset/my-plot.png", "analysis/by-class.csv",
                                          "emotion6/extra/x.json")}
    assert set(message.split("did not write: ")[1].split(". Move")[0].split(", ")) == named, message
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before


MERGE_WAIT = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
import common, evaluate, export
rank, tmp = int(os.environ["RANK"]), Path({tmp!r})

def slow_merge(ckpt, out, **kwargs):  # a merge longer than --dist-timeout-minutes
    time.sleep({merge_seconds})
    Path(out).mkdir(parents=True)
    (Path(out) / "config.json").write_text("{{}}")
export.export_hf_folder = slow_merge

(tmp / f"ready{{rank}}").touch()  # start together: the short timeout also bounds joining the group
while not (tmp / f"ready{{1 - rank}}").exists():
    time.sleep(0.05)
common.setup_distributed(timeout_minutes={dist_seconds} / 60)
folder, group = evaluate.merge_checkpoint("ckpt", tmp / ".merged-model" / "model", timeout_minutes=1)
print("merged", Path(folder, "config.json").exists(), flush=True)
if rank == 1:  # the last rank to close its engine: the folder must still be there until it has
    time.sleep(2)
    print("still there", Path(folder).exists(), flush=True)
evaluate.remove_merged(tmp / ".merged-model", group, rank, timeout_minutes=1)
"""


def test_ranks_wait_for_a_long_merge_without_timing_out(tmp_path):
    """Ranks waiting for rank 0's merge of a 3B checkpoint (minutes, more on slow storage) would hit
    --dist-timeout-minutes and end the run; rank 0 would delete the merged model under a rank still
    reading it."""
    with socket.socket() as s:  # a free port for the two processes' rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = MERGE_WAIT.format(repo=str(REPO), tmp=str(tmp_path), merge_seconds=12, dist_seconds=5)
    env = {**os.environ, "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, "-c", code], env={**env, "RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        results = [p.communicate(timeout=300) for p in ranks]
    finally:  # a hang must not outlive the test
        for p in ranks:
            p.kill()
    for p, (out, err) in zip(ranks, results):
        assert p.returncode == 0, err[-3000:]
        assert "merged True" in out
    assert "still there True" in results[1][0]
    assert not (tmp_path / ".merged-model").exists()
