"""Evaluate a model on emotion benchmarks, re-score saved predictions, and build the paper's Table 1.

Evaluate: a model (a merged folder, a base model path or hub name, or a training checkpoint, merged
on the fly) on one or more benchmark files in the data.py layout. For each benchmark it writes, under
`--out/NAME/`: predictions.jsonl (prompt id, label, full response, parsed answer, format ok, the
reflection answers with --reflect), metrics.json (accuracy, macro-F1, per-class precision / recall /
accuracy, confusion matrix, format rate, share of unparseable answers, with the SET template the
model-free coherence rate (steps 1-2 name exactly one label, the boxed answer), and with --reflect the
rates at which the model's own reflection agrees with the label and with its answer), report.md and
confusion.png. Sampling: the paper's evaluation sampling (temperature 0.6, top_p 0.95, one sample) by
default, --greedy for greedy decoding.

A training checkpoint is merged by rank 0 into `--out/.merged-model/` (a 3B model: ~7.5 GB) while the
other ranks wait (up to --merge-timeout-minutes); every rank then loads it from there, so on several
nodes --out must be on storage they all share (a checkpoint sweep's folder usually is). The merged
folder is deleted when the evaluation ends, also when it fails. An --out that already holds an
evaluation (run.json, NAME/metrics.json or predictions.jsonl, a merged model) is refused before any
model is loaded, unless --overwrite is given: it deletes that whole evaluation (every benchmark's folder,
run.json, a merged model left behind), never a file evaluate.py did not write (an --out holding one is
refused, naming it). Every benchmark's metrics.json names the run that wrote it (run_id, as in run.json),
its model and method, and --table refuses a folder whose benchmarks come from different runs. Every other
collective wait ends the run after --dist-timeout-minutes instead of hanging.

    python evaluate.py --model merged/ --data EmoSet2k@test,Emotion6/test.jsonl,WebEmo/test7.jsonl \\
        --names emoset,emotion6,webemo --out eval/emor3-emoset --method "EMO-R3 n=8" --train-domain emoset
    torchrun --nproc_per_node 8 evaluate.py ...           # data parallel: each rank takes a share
    python evaluate.py --model Qwen/Qwen2.5-VL-3B-Instruct --template none --parse lenient ...  # zero-shot

Re-score (no model): python evaluate.py --predictions eval/x/emoset/predictions.jsonl
Table 1:             python evaluate.py --table eval/emor3-emoset,eval/emor3-emotion6 --out eval/table
  Each folder is one evaluate.py output (its run.json names --method and --train-domain); the table
  has per method one block per training domain: the in-domain column first, then the other datasets
  (EmoSet, Emotion6, WebEmo order), then the in-domain mean, out-of-domain mean and overall mean.
"""

import dataclasses
import json
import shutil
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import data
import report
import rewards
import video

# What evaluate.py writes, and so all that --overwrite may delete: in --out, and in each benchmark's folder
OUT_FILES = ("run.json", "table1.md", "table1.csv")
MERGED_DIR = ".merged-model"  # a training checkpoint merged for the evaluation (deleted at its end)
BENCHMARK_FILES = ("predictions.jsonl", "labels.txt", "metrics.json", "report.md", "confusion.png",
                   "metrics.rescored.json")


@dataclass
class Config:
    model: str = ""  # merged folder, base model path / hub name, or a training checkpoint (merged on the fly)
    data: str = ""  # benchmark files (data.py layout), comma separated
    names: str = ""  # a name per benchmark, comma separated (default: the file names); emoset/emotion6/webemo
        # for --table
    labels: str = ""  # label set for every benchmark (default: each benchmark's own labels.txt / answers)
    out: str = "eval"  # output folder: one sub-folder per benchmark (on shared storage for a checkpoint on
        # several nodes)
    overwrite: bool = False  # replace an --out's earlier evaluation, all of it (never a file evaluate.py did not write)
    method: str = ""  # method name for --table (default: the model's folder name, with the template unless set)
    train_domain: str = ""  # the dataset the model was trained on (emoset, emotion6), for --table
    template: Literal[rewards.PROMPT_TEMPLATES] = "set"  # r1-omni: <answer> tags; none: zero-shot baselines
    parse: Literal["boxed", "lenient"] = "boxed"  # boxed: the last \\boxed{} (as the reward); lenient: else a
        # bare label in the response
    greedy: bool = False  # greedy decoding instead of the paper's evaluation sampling
    temperature: float = 0.6  # EMO-R3 val_override_config
    top_p: float = 0.95
    max_response_length: int = 2048  # EMO-R3
    max_prompt_length: int = 2048
    min_pixels: int = 512 * 512  # EMO-R3
    max_pixels: int = 2048 * 2048
    video_fps: float = video.VIDEO_FPS  # video rows: frames per second sampled (as train_grpo.py)
    video_max_frames: int = video.VIDEO_MAX_FRAMES
    video_min_pixels: int = video.VIDEO_MIN_PIXELS
    video_max_pixels: int = video.VIDEO_MAX_PIXELS
    reflect: bool = False  # also ask the two reflection questions about each response
    reflect_max_tokens: int = 16  # reflection answers are one word
    reflect_temperature: float = 0.6  # EMO-R3's re-ask sampling
    reflect_top_p: float = 0.95
    max_samples: int = 0  # evaluate the first k rows of each benchmark (0 = all)
    batch_size: int = 256  # prompts per generate call (progress granularity)
    engine: Literal["vllm", "hf"] = "vllm"  # hf: transformers generate (slow)
    trust_remote_code: bool = False  # let transformers/vLLM run Python code shipped with the model folder
    tensor_parallel_size: int = 1  # vLLM TP
    gpu_memory_utilization: float = 0.8
    cpu_kv_cache_gb: float = 1.0
    seed: int = 1
    skip_bad_rows: bool = False  # skip and count broken rows instead of stopping
    predictions: str = ""  # re-score this predictions.jsonl (no model needed)
    table: str = ""  # build Table 1 from these evaluate.py output folders, comma separated
    allow_cpu: bool = False  # evaluate on the CPU when CUDA is unusable, instead of stopping
    dist_timeout_minutes: float = 30.0  # minutes a collective may wait (a rank died or hangs) before the run stops
    merge_timeout_minutes: float = 240.0  # minutes the other ranks wait for rank 0 to merge a checkpoint (3B: a few)


# --- evaluation with a model ----------------------------------------------------------------------

def default_method(cfg):
    """--table's name for a run without --method: the model's folder, and the arm when it is not SET
    ("r1-omni-run [r1-omni]"), so arms evaluated from same-named folders stay apart."""
    name = Path(cfg.model.rstrip("/")).name
    return name if cfg.template == "set" else f"{name} [{cfg.template}]"


def previous_evaluation(out):
    """The files in `out` that an earlier evaluate.py run left (none: a new or unrelated folder)."""
    out = Path(out)
    found = [p for p in (out / "run.json", out / MERGED_DIR) if p.exists()]
    return found + sorted(out.glob("*/metrics.json")) + sorted(out.glob("*/predictions.jsonl"))


def listing(paths, most=6):
    """The first `most` paths for a message, and how many more there are."""
    return ", ".join(map(str, paths[:most])) + (f" and {len(paths) - most} more" if len(paths) > most else "")


def evaluation_contents(out):
    """(ours, others) in `out`: ours, what evaluate.py writes there (run.json, the tables, a merged model,
    the folders of benchmarks, holding its files only); others, every file it does not write, which
    --overwrite never deletes. An empty folder is neither."""
    ours, others = [], []
    for entry in sorted(Path(out).iterdir()) if Path(out).is_dir() else []:
        if entry.is_symlink():  # (a link is never ours: rmtree would not follow it, a reader of --out would)
            others.append(entry)
        elif entry.is_dir() and entry.name == MERGED_DIR:
            ours.append(entry)
        elif entry.is_dir():
            files = [p for p in sorted(entry.rglob("*")) if p.is_symlink() or not p.is_dir()]
            foreign = [p for p in files if p.parent != entry or p.name not in BENCHMARK_FILES
                       or p.is_symlink() or not p.is_file()]
            # predictions.jsonl is a benchmark's first file: a folder without it (or metrics.json) is not one
            if not foreign and {p.name for p in files} & {"predictions.jsonl", "metrics.json"}:
                ours.append(entry)
            else:
                others += foreign or files
        elif entry.is_file() and entry.name in OUT_FILES:
            ours.append(entry)
        else:
            others.append(entry)
    return ours, others


def remove_evaluation(out):
    """--overwrite: delete the evaluation in `out` (evaluation_contents' `ours`), run.json first, so that a
    deletion that fails part-way never leaves a folder that --table takes for a finished evaluation."""
    ours, _ = evaluation_contents(out)
    for entry in sorted(ours, key=lambda p: p.name != "run.json"):
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def merge_checkpoint(checkpoint, folder, timeout_minutes, dtype=None):
    """Rank 0 merges a training checkpoint into the Hugging Face folder `folder` while the other ranks
    wait; every rank returns once it can read the folder. Returns the gloo group the ranks waited on."""
    import torch.distributed as dist

    from export import export_hf_folder

    # A 3B merge takes minutes, more on slow storage: longer than --dist-timeout-minutes may allow. So
    # the waiting ranks wait on a group of their own, whose timeout is this one (torch gives a gloo
    # new_group the timeout passed here, or gloo's 30-minute default, never the default group's).
    group = dist.new_group(backend="gloo", timeout=timedelta(minutes=timeout_minutes))
    error = [None]
    if dist.get_rank() == 0:
        try:  # overwrite: a killed run's leftover (the --overwrite check has let it through)
            export_hf_folder(checkpoint, folder, dtype=dtype, overwrite=True)
        except (Exception, SystemExit) as e:  # told to every rank, so none waits for a folder that never comes
            error = [f"merging {checkpoint} into {folder} failed: {type(e).__name__}: {e}"]
    dist.broadcast_object_list(error, src=0, group=group)
    if error[0]:
        raise SystemExit(error[0])
    # on several nodes the folder is visible everywhere only if --out is on shared storage: say so here,
    # not as a "not a valid model identifier" on some ranks while the others wait for them
    seen = [None] * dist.get_world_size()
    dist.all_gather_object(seen, (socket.gethostname(), Path(folder, "config.json").exists()), group=group)
    blind = sorted({host for host, ok in seen if not ok})
    if blind:
        raise SystemExit(f"{folder}, merged by rank 0, is not visible on {', '.join(blind)}: on several nodes "
                         f"--out must be on storage that every node shares")
    return str(folder), group


def remove_merged(root, group, rank, timeout_minutes):
    """Rank 0 deletes the merged model once every rank is done with it (every engine has finished
    generating). group None: the merge never finished, so no rank read it."""
    import torch.distributed as dist

    if group is not None:
        try:  # a timeout of its own: a dead or hung rank must not hold the others for the merge's hours
            dist.monitored_barrier(group, timeout=timedelta(minutes=timeout_minutes))
        except RuntimeError as e:  # a rank that failed or died reads nothing any more either
            print(f"rank {rank}: {e}")
    if rank == 0:
        shutil.rmtree(root, ignore_errors=True)
        if root.exists():
            print(f"could not remove the merged model {root}; delete it by hand")


def evaluate(cfg):
    import torch.distributed as dist
    from tqdm import tqdm
    from transformers import AutoProcessor

    from common import require_cuda, setup_distributed
    from data import skipped_on_any_rank
    from model import compute_dtype
    from engines import Request, start_engine
    from rollout import ask_reflections, visuals

    require_cuda(cfg.allow_cpu)
    rank, world_size, device = setup_distributed(cfg.dist_timeout_minutes)
    out_root = Path(cfg.out)
    if rank == 0 and cfg.overwrite:  # the whole earlier evaluation: a benchmark this run does not write must not
        remove_evaluation(out_root)  # stay beside the new run.json (--table would credit it to this run's method)
    # what every benchmark's metrics.json records, so that --table can tell the runs of one folder apart
    run = {"run_id": f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}", "model": cfg.model,
           "method": cfg.method or default_method(cfg), "train_domain": cfg.train_domain}
    model_path, merged_root, merge_group, engine = cfg.model, None, None, None
    try:
        if Path(model_path, "trainer_state.json").exists() or Path(model_path, "checkpoints").is_dir():
            # a training checkpoint: merged once, by rank 0, under --out, which every node can read
            merged_root = out_root / MERGED_DIR
            model_path, merge_group = merge_checkpoint(cfg.model, merged_root / "model", cfg.merge_timeout_minutes,
                                                       dtype="float32" if device.type == "cpu" else None)
        processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
        tokenizer = processor.tokenizer
        files = [f for f in cfg.data.split(",") if f]
        names = [n for n in cfg.names.split(",") if n] or [
            Path(f.partition("@")[0]).stem + (f"-{f.partition('@')[2]}" if "@" in f else "") for f in files]
        if len(names) != len(files):
            raise SystemExit(f"--names has {len(names)} entries for {len(files)} --data files")
        # every benchmark read once, here, before the engine: a bad file stops the run before vLLM's
        # start-up, and the engine learns from the datasets whether a benchmark has clips
        datasets = [data.PromptDataset(file, processor, template=cfg.template, labels=cfg.labels or None,
                                       min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels,
                                       max_prompt_length=cfg.max_prompt_length, skip_bad=cfg.skip_bad_rows,
                                       **video.video_kwargs(cfg)) for file in files]
        # the engine's context, as the trainer's; vLLM budgets memory for a clip only where a benchmark has one
        context = cfg.max_prompt_length + max(cfg.max_response_length, cfg.reflect_max_tokens)
        engine = start_engine(cfg.engine, model_path, processor, device, dtype=compute_dtype("auto", device),
                              seed=cfg.seed, max_model_len=context,
                              tensor_parallel_size=cfg.tensor_parallel_size,
                              gpu_memory_utilization=cfg.gpu_memory_utilization, cpu_kv_cache_gb=cfg.cpu_kv_cache_gb,
                              trust_remote_code=cfg.trust_remote_code,
                              videos=any(dataset.has_videos for dataset in datasets))
        # engines start asleep (on GPU a sleeping vLLM engine would wait forever): the weights are the
        # folder's own, so there is nothing to push, no cache to reset
        engine.wake_up(["weights", "kv_cache"])
        temperature = 0.0 if cfg.greedy else cfg.temperature

        summary = {}
        for name in names:
            dataset = datasets.pop(0)  # let go of each benchmark once done (a parquet may embed its images)
            count = min(len(dataset), cfg.max_samples or len(dataset))
            mine = list(range(count))[rank::world_size]  # strided share: every rank gets ~count / world
            rows = []
            bar = tqdm(total=len(mine), desc=f"{name} (rank 0's share)", disable=rank != 0)
            # every rank calls generate the same number of times (TP groups must stay in step)
            num_batches = -(-(-(-count // world_size)) // cfg.batch_size)
            for start in range(0, num_batches * cfg.batch_size, cfg.batch_size):
                prompts = dataset.get_batch(mine[start:start + cfg.batch_size])
                requests = [Request(p.text, p.prompt_ids, p.images, p.videos) for p in prompts]
                outputs = engine.generate(requests, 1, temperature, cfg.top_p, cfg.max_response_length,
                                          cfg.seed + start, logprobs_for=0)
                texts = [tokenizer.decode(o[0][0], skip_special_tokens=True) for o in outputs]
                # the trainer's re-ask, exactly: each question shown what its response saw (image or clip)
                answers = ask_reflections(engine, processor, rewards.REASKS if cfg.reflect else (), texts,
                                          [visuals(p) for p in prompts], dataset.labels,
                                          temperature=cfg.reflect_temperature, top_p=cfg.reflect_top_p,
                                          max_tokens=cfg.reflect_max_tokens, limit=context - cfg.reflect_max_tokens,
                                          seed=cfg.seed + start)
                reflect_text, reflect_image = (answers.get(q, [None] * len(texts)) for q in ("text", "image"))
                for p, text, rt, ri in zip(prompts, texts, reflect_text, reflect_image):
                    prediction, parsed = report.parse_answer(text, dataset.labels, cfg.parse, cfg.template)
                    rows.append({"id": p.index, "where": p.where, "label": p.answer, "response": text, "parsed": parsed,
                                 "prediction": prediction,
                                 "format_ok": rewards.emor3_reward(
                                     text, p.answer, variant=rewards.variant_for_template(cfg.template)
                                 )["format"] == 1.0,
                                 "reflect_text": rt, "reflect_image": ri,
                                 **({"reasoning_coherent": report.reasoning_coherent(text, dataset.labels)}
                                    if cfg.template == "set" else {})})
                bar.update(len(prompts))
            bar.close()
            gathered = [None] * world_size
            dist.all_gather_object(gathered, rows)
            skipped = skipped_on_any_rank(dataset)  # rows each rank left out (--skip-bad-rows), each once
            if rank == 0:
                rows = sorted((r for part in gathered for r in part), key=lambda r: r["id"])
                labels_by_case = {label.lower(): label for label in dataset.labels}
                for r in rows:  # answers are matched case-insensitively; count them under the label's spelling
                    r["label"] = labels_by_case[r["label"].lower()]
                metrics = report.compute_metrics(rows, dataset.labels)
                if skipped:
                    metrics["skipped_rows"] = skipped
                if dataset.dropped_long:  # over --max-prompt-length, dropped at load as in the reference
                    metrics["dropped_long_rows"] = len(dataset.dropped_long)
                report.write_outputs(out_root / name, name, rows, metrics, run)
                summary[name] = metrics["accuracy"]
                coherent = (f"  reasoning coherent {metrics['reasoning_coherent_rate']:.3f}"
                            if "reasoning_coherent_rate" in metrics else "")
                print(f"{name}: accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  "
                      f"format {metrics['format_rate']:.3f}{coherent}  -> {out_root / name}")
        if rank == 0:
            (out_root / "run.json").write_text(json.dumps({**run, "config": dataclasses.asdict(cfg),
                                                            "accuracy": summary}, indent=1))
        return summary
    finally:  # on success and on failure alike
        # before engine.close: vLLM's shutdown tears down the process groups the wait needs (the engine
        # read the weights into memory at start-up and holds no file of the folder open)
        if merged_root is not None:
            remove_merged(merged_root, merge_group, rank, cfg.dist_timeout_minutes)
        if engine is not None:
            engine.close()
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv=None):
    from common import parse_flags
    cfg = parse_flags(Config, __doc__, argv)  # --parse, --template, --engine: their choices, by the parser
    if cfg.predictions:
        rows, metrics = report.rescore(cfg.predictions, cfg.labels or None, cfg.parse, cfg.template)
        print(json.dumps({k: v for k, v in metrics.items() if k != "confusion_matrix"}, indent=1))
        out = Path(cfg.predictions).parent
        (out / "metrics.rescored.json").write_text(json.dumps(metrics, indent=1))
        return metrics
    if cfg.table:
        header, table = report.build_table([f for f in cfg.table.split(",") if f], cfg.out)
        print((Path(cfg.out) / "table1.md").read_text())
        return table
    if not (cfg.model and cfg.data):
        raise SystemExit("give --model and --data (or --predictions FILE, or --table FOLDERS)")
    if cfg.merge_timeout_minutes <= 0:
        raise SystemExit(f"--merge-timeout-minutes must be > 0, got {cfg.merge_timeout_minutes}")
    found = previous_evaluation(cfg.out)
    if found and not cfg.overwrite:  # checked on every rank, before any model is loaded
        raise SystemExit(f"--out {cfg.out} already holds an evaluation: {listing(found)}. Choose another --out, "
                         f"or pass --overwrite to replace it")
    ours, others = evaluation_contents(cfg.out) if cfg.overwrite else ([], [])
    if ours and others:  # rank 0 deletes `ours` in evaluate(), once every rank has got here
        raise SystemExit(f"--overwrite replaces the evaluation in --out {cfg.out} and deletes only what evaluate.py "
                         f"writes, but the folder also holds {len(others)} file(s) that evaluate.py did not write: "
                         f"{listing(others)}. Move them out of it, or choose another --out; nothing was deleted")
    return evaluate(cfg)


if __name__ == "__main__":
    main()
    from common import exit_process
    exit_process()  # not Python's shutdown, where gloo's threads can abort a finished run: see its docstring
