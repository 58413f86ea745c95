"""The stages' flags as a user meets them, through the scripts' main: a value outside a flag's choices
(declared on the Config field as a Literal) refused with the choices named, also from a --recipe file;
batch sizes that torchrun's world cannot split refused before anything loads; and the flags both stages
share (startup.RunConfig) reaching sft.py, whose data reader is the trainer's."""

import json
import shutil

import pytest
import torch.distributed as dist

import common
import evaluate
import sft
import train_grpo
from test_sft import run_sft, small


@pytest.mark.parametrize("stage, flag, bad", [(train_grpo, "--loss-agg", "tokens"), (train_grpo, "--sleep-level", "3"),
                                              (train_grpo, "--reward", "codes"), (sft, "--template", "sets"),
                                              (sft, "--precision", "fp16"), (evaluate, "--parse", "loose"),
                                              (evaluate, "--engine", "vlm")])
def test_a_value_outside_a_flags_choices_is_refused_naming_them(stage, flag, bad, capsys):
    """Broken: a misspelt choice reaching the run (a --loss-agg the update does not know fails an hour in,
    at the first update); the choices are the Config field's Literal, said by --help and by the refusal."""
    with pytest.raises(SystemExit) as refused:
        stage.main([*(["--demo"] if stage is not evaluate else []), flag, bad, "--print-config"])
    assert refused.value.code == 2
    said = capsys.readouterr().err
    assert f"argument {flag}: invalid choice:" in said and bad in said and "(choose from" in said


def test_a_recipe_files_values_meet_the_same_choices(tmp_path, capsys):
    """Broken: a recipe file (parsed by the same parser) slipping a value past the choices; and a good int
    choice arriving as a string (--sleep-level "2" != 2 would fail every check that compares it)."""
    recipe = tmp_path / "mine.flags"
    recipe.write_text("--kl-kind k3  # the estimator's name in the paper, not a --kl-kind value\n")
    with pytest.raises(SystemExit) as refused:
        train_grpo.main(["--demo", "--recipe", str(recipe), "--print-config"])
    assert refused.value.code == 2 and "argument --kl-kind: invalid choice: 'k3'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as printed:
        train_grpo.main(["--demo", "--sleep-level", "2", "--kl-kind", "mse", "--print-config"])
    assert printed.value.code == 0
    config = json.loads(capsys.readouterr().out)
    assert config["sleep_level"] == 2 and config["kl_kind"] == "mse"


@pytest.mark.parametrize("stage, refused", [(train_grpo, "--rollout-batch-size 16 and --mini-batch-size 16"),
                                            (sft, "--batch-size 16")])
def test_batches_that_the_launch_cannot_split_are_refused_before_anything_loads(stage, refused, monkeypatch):
    """Broken: a batch size torchrun's world does not divide, found only after the models loaded (minutes on a
    GPU). Without the check this run would start a process group of 3 and time out waiting for the others
    (--dist-timeout-minutes 0.05: seconds, and another message)."""
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="3", LOCAL_WORLD_SIZE="3", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT="29897").items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit, match=rf"{refused}: must be a multiple of the world size \(3\)"):
        stage.main(["--demo", "--dist-timeout-minutes", "0.05"])
    assert not dist.is_initialized()


def test_help_gives_each_flag_the_comment_of_the_class_that_declares_it():
    """Broken: the shared flags (declared in startup.RunConfig) losing their help in the stages' --help."""
    grpo, cold = (common.config_parser(stage.Config, "").format_help() for stage in (train_grpo, sft))
    for text in (grpo, cold):
        assert "0: full-parameter training" in " ".join(text.split())  # --lora-rank, RunConfig's comment
        assert "--precision {auto,bf16,fp32}" in text
    assert "token: global token mean" in " ".join(grpo.split())  # --loss-agg, train_grpo.Config's own
    assert "label-only target" in " ".join(cold.split())  # --target, sft.Config's own


def test_sft_reads_images_from_image_dir(tiny_model_dir, demo_dir, tmp_path, monkeypatch):
    """Broken: sft.py without --image-dir (the trainer had it, sft.py did not): a data file kept apart from
    its images could train GRPO but not its cold start. Its rows name images/... relative to --image-dir."""
    apart = tmp_path / "rows"
    apart.mkdir()
    shutil.copy(demo_dir / "train.jsonl", apart / "train.jsonl")
    with pytest.raises(SystemExit, match="no such file: .*/rows/images/train_"):  # beside the data file: none
        run_sft(monkeypatch, *small(tiny_model_dir, demo_dir, tmp_path / "without", "--max-steps", 1,
                                    "--train-files", apart / "train.jsonl"))
    run_sft(monkeypatch, *small(tiny_model_dir, demo_dir, tmp_path / "with", "--max-steps", 1,
                                "--train-files", apart / "train.jsonl", "--image-dir", demo_dir))
    assert (tmp_path / "with" / "checkpoints" / "step_1").is_dir()
