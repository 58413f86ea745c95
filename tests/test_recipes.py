"""Recipes as data (recipes/*.flags, `--recipe NAME`), `--print-config`, and the flags R1-Omni's recipe
needed: --top-k, --lr-schedule, --adv-eps. The expected values are written out from R1-Omni's sources
(HumanMLLM/R1-Omni grpo.py and its launch script, TRL 0.14's GRPOTrainer defaults) in the comments."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

import checkpoint
import common
import train_grpo
from test_train import REPO, read_jsonl

# What `--recipe r1-omni` must resolve to: R1-Omni's settings; everything else stays EMO-R3's default.
R1_OMNI = {
    "template": "r1-omni", "reward": "r1-omni",  # its prompt and its format + accuracy reward
    "reflect_text": False, "reflect_image": False,  # no re-ask
    "top_k": 50,  # HF generate's default top_k
    "kl_coef": 0.04, "kl_kind": "low_var_kl",  # TRL 0.14 beta 0.04, its k3 estimator
    "adv_eps": 1e-4,  # TRL 0.14: (rewards - mean) / (std + 1e-4)
    "loss_agg": "seq", "mini_batch_size": 16, "ppo_epochs": 1,  # per-sequence mean, one update per batch
    "lr": 1e-6, "lr_schedule": "linear", "weight_decay": 0.0, "lr_warmup_ratio": 0.0,
    "max_prompt_length": 512, "max_response_length": 512,
    "rollout_batch_size": 16, "epochs": 2, "group_size": 8, "temperature": 1.0,
    "recipe": "r1-omni",
}


def print_config(*flags):
    done = subprocess.run([sys.executable, "train_grpo.py", *flags, "--print-config"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "VLLM_NO_USAGE_STATS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_r1_omni_recipe_resolves_to_r1_omnis_settings():
    """Broken: `--recipe r1-omni` (recipes/r1-omni.flags read, its values applied) or `--print-config`,
    which must print the resolved config and exit before any model or data is needed."""
    config = print_config("--recipe", "r1-omni")
    assert {k: config[k] for k in R1_OMNI} == R1_OMNI
    defaults = dataclasses.asdict(train_grpo.Config())
    untouched = {k: v for k, v in config.items() if k not in R1_OMNI}
    assert untouched == {k: defaults[k] for k in untouched}  # the rest is EMO-R3's


def test_emo_r3_recipe_is_the_defaults_and_the_command_line_wins():
    """Broken: recipes/emo-r3.flags drifting from Config's defaults, the order field defaults < --demo <
    recipe < command line, or a recipe naming a flag the script does not have being let through."""
    parser = common.config_parser(train_grpo.Config, "")
    assert common.recipe_values(parser, "emo-r3") == {}  # every value it writes down is the default
    assert (common.RECIPE_DIR / "emo-r3.flags").read_text().count("\n--") >= 20  # and it writes them down
    assert train_grpo.parse_config(["--recipe", "emo-r3", "--demo"]).lr == 2e-6  # the recipe over --demo's 1e-3
    cfg = train_grpo.parse_config(["--demo", "--recipe", "r1-omni", "--lr", "3e-6", "--group-size", "4"])
    assert (cfg.lr, cfg.group_size, cfg.kl_coef) == (3e-6, 4, 0.04)  # given flags win, the rest is the recipe's
    with pytest.raises(SystemExit, match="no recipe file"):
        train_grpo.parse_config(["--demo", "--recipe", "r2-omni"])


def test_a_recipe_file_with_an_unknown_flag_is_refused(tmp_path):
    """Broken: a typo in a recipe file silently ignored (the run would train with the default)."""
    recipe = tmp_path / "mine.flags"
    recipe.write_text("--lr 1e-6  # fine\n--kl-coeff 0.1  # a typo\n")
    with pytest.raises(SystemExit, match="not flags of this script: --kl-coeff"):
        train_grpo.parse_config(["--demo", "--recipe", str(recipe)])
    recipe.write_text("--lr 1e-6\n")
    assert train_grpo.parse_config(["--demo", "--recipe", str(recipe)]).lr == 1e-6  # a file path works too


def test_resume_refuses_another_recipe(tmp_path):
    """Broken: --recipe recorded in config.json and respected by --resume: resuming an r1-omni run
    without the recipe would silently train on with EMO-R3's lr, KL and loss."""
    saved = dataclasses.asdict(train_grpo.parse_config(["--demo", "--recipe", "r1-omni"]))
    again = dataclasses.asdict(train_grpo.parse_config(["--demo", "--recipe", "r1-omni", "--resume", "--output-dir",
                                                        "x"]))
    forgot = dataclasses.asdict(train_grpo.parse_config(["--demo", "--resume", "--output-dir", "x"]))
    may, ckpt = train_grpo.RESUME_MAY_CHANGE, tmp_path
    (ckpt / "trainer_state.json").write_text(json.dumps({"config": saved}))  # what save_checkpoint records
    checkpoint.check_resume_config(ckpt, again, may)
    with pytest.raises(SystemExit) as refused:
        checkpoint.check_resume_config(ckpt, forgot, may)
    assert "recipe" in str(refused.value) and "lr" in str(refused.value)


@pytest.mark.parametrize("schedule, warmup_ratio, want", [
    ("constant", 0.0, [1, 1, 1, 1]),
    ("constant", 0.5, [0.5, 1, 1, 1]),  # warm-up over 2 of 4 steps: the full lr at its second step
    ("linear", 0.0, [1, 0.75, 0.5, 0.25]),  # HF's get_linear_schedule_with_warmup: (total - s) / total
    ("linear", 0.5, [0.5, 1, 2 / 3, 1 / 3]),  # warm-up, then (total - s) / (total - warm-up + 1)
])
def test_lr_factor_by_hand(schedule, warmup_ratio, want):
    """Broken: --lr-schedule linear (R1-Omni's HF Trainer decays the lr to 0) or the constant schedule."""
    cfg = train_grpo.Config(lr_schedule=schedule, lr_warmup_ratio=warmup_ratio)
    assert [train_grpo.lr_factor(s, 4, cfg) for s in range(4)] == pytest.approx(want)


def test_top_k_reaches_the_engine(shared_launch):
    """Broken: --top-k passed to vLLM's sampling: at top-k 1 every response of a group is the greedy one,
    so with a reward that reads only the response every advantage is exactly 0."""
    run = shared_launch.steps.finished("top_k")
    metrics, samples = read_jsonl(run / "metrics.jsonl"), read_jsonl(run / "samples.jsonl")
    assert metrics[0]["advantage/abs_mean"] == 0.0
    assert len({s["response"] for s in samples}) == 1  # the first group's 4 responses (samples_per_step 4)
