"""Video end to end: train_grpo.py on clips (vLLM rollouts and re-asks, FSDP2 updates on 2 ranks, weight
sync), and the re-ask showing the clip the rollout saw."""

import json

import pytest

import data
import rewards
import rollout
from rollout import visuals
from test_train import read_jsonl, torchrun

VIDEO_FLAGS = ["--video-min-pixels", "3136", "--video-max-pixels", "12544", "--video-max-frames", "16"]


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    """16 training and 4 test clips of the video demo (8 frames of 56 x 56: 16 video tokens each)."""
    import tiny
    return tiny.make_video_demo_dataset(tmp_path_factory.mktemp("video") / "data", num_train=16, num_test=4, seed=0)


def test_consistency_re_ask_shows_the_rollouts_clip(processor, video_dir):
    """The consistency judge would be judging no picture, or another one, if its request did not carry
    the very frames the rollout was given, in one video slot."""
    dataset = data.PromptDataset(video_dir / "train.jsonl", processor, min_pixels=3136, max_pixels=12544,
                                 video_min_pixels=3136, video_max_pixels=12544, video_max_frames=16)
    prompt = dataset[0]
    assert prompt.images == [] and len(prompt.videos) == 1 and len(prompt.videos[0].frames) == 8
    response = "<step1>The clip turns from red to blue.</step1><step2>x</step2><step3>y</step3>\\boxed{anger}"
    image_ask, text_ask = (rollout.reask_requests(processor, rewards.REASKS[kind], [response], [visuals(prompt)],
                                                  dataset.labels, 512)[0] for kind in ("image", "text"))
    video_pad, image_pad = processor.tokenizer.convert_tokens_to_ids(["<|video_pad|>", "<|image_pad|>"])
    assert image_ask.videos == prompt.videos and image_ask.images == []  # the same Video object: the same frames
    assert image_ask.prompt_ids.count(video_pad) == 1 and image_ask.prompt_ids.count(image_pad) == 0
    assert "The clip turns from red to blue." in image_ask.text
    assert text_ask.videos == [] and text_ask.images == [] and video_pad not in text_ask.prompt_ids  # text only


def test_grpo_on_video_end_to_end(tiny_model_dir, video_dir, tmp_path):
    """Two EMO-R3 steps on clips at world size 2: rollouts from vLLM (frames and metadata), both re-asks,
    the FSDP2 update with the clips' pixels and 3-D positions, the weight push, validation on clips. The
    engine's log-probs of its own samples must equal the trainer's (fp32): with transformers' own
    positions for video the gap was up to 6.4 on the tiny model."""
    out = tmp_path / "run"
    torchrun("--master-port", "29871", "train_grpo.py", "--demo", "--model", tiny_model_dir,
             "--train-files", video_dir / "train.jsonl", "--val-files", video_dir / "test.jsonl", "--output-dir", out,
             "--rollout-batch-size", "4", "--mini-batch-size", "4", "--group-size", "4", "--max-steps", "2",
             "--val-freq", "2", "--save-freq", "2", "--logp-check-prompts", "-1", *VIDEO_FLAGS)
    metrics = [m for m in read_jsonl(out / "metrics.jsonl") if "step" in m]
    train = [m for m in metrics if "rollout/logp_gap_mean" in m]
    assert [m["step"] for m in train] == [1, 2]
    for m in train:
        assert m["rollout/logp_gap_max"] < 1e-4, m["rollout/logp_gap_max"]  # fp32: ~1e-6 when positions agree
    assert any(m["grad_norm"] > 0 for m in train)  # an update ran on the clips' pixels
    assert any("val/accuracy" in m for m in metrics)
    samples = read_jsonl(out / "samples.jsonl")
    assert samples and all(s["reflect_text_answer"] is not None and s["reflect_image_answer"] is not None
                           for s in samples)
    state = json.loads(next((out / "checkpoints").glob("step_2/trainer_state.json")).read_text())
    assert state["step"] == 2
