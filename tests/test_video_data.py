"""Video rows in data.py and video.py: real mp4 files written with PyAV in tmp_path, frame lists, R1-Omni's layout,
the tiny model's real processor. Frame i of every test video is a solid colour that says i, so a test can tell
WHICH frames were sampled."""

import json
import sys
from types import SimpleNamespace

import av
import numpy as np
import pytest
from PIL import Image

import data
import rows
import video

VIDEO_PAD = "<|video_pad|>"
R1_OMNI_QUESTION = ("As an emotional recognition expert; throughout the video, which emotion conveyed by the "
                    "characters is the most obvious to you?")


def colour(i):
    """Frame i's colour: red and green move 8 levels a frame, so every frame of a 30-frame video differs."""
    return (8 * i, 255 - 8 * i, 128)


def write_video(path, num_frames=30, fps=10, size=(64, 48)):
    """An H.264 mp4 (lossless: crf 0) of solid colour(i) frames."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt, stream.options = width, height, "yuv420p", {"crf": "0"}
        for i in range(num_frames):
            frame = np.empty((height, width, 3), np.uint8)
            frame[...] = colour(i)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def which_frames(clip, num_frames=30):
    """The source index of each frame of a Video: the nearest colour(i) (YUV 4:2:0 moves colours a little)."""
    palette = np.array([colour(i) for i in range(num_frames)], float)
    means = [np.asarray(frame, float).reshape(-1, 3).mean(0) for frame in clip.frames]
    return [int(np.abs(palette - mean).sum(1).argmin()) for mean in means]


def write_rows(path, rows):
    if path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        data.write_jsonl(path, rows)
    return path


def save_frame(path, i, size=(64, 48)):
    Image.new("RGB", size, colour(i)).save(path)
    return path.name


# --- sampling, as qwen-vl-utils' fetch_video ---------------------------------------------------------

def test_video_file_frames_fps_and_size(tmp_path):
    write_video(tmp_path / "clip.mp4")  # 30 frames at 10 fps: 3 seconds
    clip = video.load_video("clip.mp4", tmp_path)
    # smart_nframes: 30 frames / 10 fps * 2 fps = 6, within [4, min(768, 30)], even -> 6 frames;
    # torch.linspace(0, 29, 6) = 0, 5.8, 11.6, 17.4, 23.2, 29 -> rounded 0, 6, 12, 17, 23, 29;
    # sample fps = 6 / 30 * 10 = 2.0
    assert which_frames(clip) == [0, 6, 12, 17, 23, 29]
    assert clip.fps == 2.0
    # the frame size: 64x48 = 3072 px is under min_pixels 512*512 = 262144 (EasyR1's), so smart_resize scales both
    # sides by sqrt(262144 / 3072) = 9.2376 and rounds up to multiples of 28: 48 -> 443.4 -> 448, 64 -> 591.2 -> 616;
    # 616 * 448 = 275968 px is within the per-frame budget max(min(602112, 90316800 / 6 * 2), 1.05 * 262144)
    assert {frame.size for frame in clip.frames} == {(616, 448)}
    assert all(frame.mode == "RGB" for frame in clip.frames)
    array = clip.array()
    assert array.shape == (6, 448, 616, 3) and array.dtype == np.uint8
    assert video.video_shape("clip.mp4", tmp_path) == (6, 616, 448)  # from the container, nothing decoded
    # EasyR1's own setting passes its image min_pixels 512*512: sides * sqrt(262144 / 3072) = 9.2376,
    # 48 -> 443.4 -> 448, 64 -> 591.2 -> 616
    assert video.load_video("clip.mp4", tmp_path, min_pixels=512 * 512).frames[0].size == (616, 448)

    # a frame cap of 4: linspace(0, 29, 4) = 0, 9.67, 19.33, 29 -> 0, 10, 19, 29; fps = 4 / 30 * 10
    capped = video.load_video("clip.mp4", tmp_path, max_frames=4)
    assert which_frames(capped) == [0, 10, 19, 29]
    assert capped.fps == pytest.approx(4 / 3)
    # a half-second clip: 5 / 10 * 2 = 1 frame, raised to FPS_MIN_FRAMES 4; linspace(0, 4, 4) = 0, 1.33,
    # 2.67, 4 -> 0, 1, 3, 4; fps = 4 / 5 * 10 = 8
    write_video(tmp_path / "short.mp4", num_frames=5)
    short = video.load_video(str(tmp_path / "short.mp4"), "elsewhere")  # an absolute path ignores base_dir
    assert which_frames(short) == [0, 1, 3, 4] and short.fps == 8.0


def test_video_files_without_a_true_frame_count(tmp_path):
    # Matroska stores no frame count: the packets are counted (not decoded), and the sampling is the same
    write_video(tmp_path / "clip.mkv")
    with av.open(str(tmp_path / "clip.mkv")) as container:
        assert container.streams.video[0].frames == 0
    assert video.video_info(tmp_path / "clip.mkv") == (30, 10.0, 64, 48)
    assert which_frames(video.load_video("clip.mkv", tmp_path)) == [0, 6, 12, 17, 23, 29]
    # an mp4 whose header counts 30 frames but whose data holds 15 (cut after the 15th packet; moov first, no
    # B-frames, so the 15 decode): the frames that are there are sampled. 15 / 10 * 2 = 3 -> 4 (the minimum);
    # linspace(0, 14, 4) = 0, 4.67, 9.33, 14 -> 0, 5, 9, 14; fps = 4 / 15 * 10
    with av.open(str(tmp_path / "whole.mp4"), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"crf": "0", "bframes": "0"}
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), colour(i), np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with av.open(str(tmp_path / "whole.mp4")) as container:
        ends = [packet.pos + packet.size for packet in container.demux(video=0) if packet.size]
    (tmp_path / "cut.mp4").write_bytes((tmp_path / "whole.mp4").read_bytes()[:ends[14]])
    assert video.video_info(tmp_path / "cut.mp4")[0] == 30
    cut = video.load_video("cut.mp4", tmp_path)
    assert which_frames(cut) == [0, 5, 9, 14] and cut.fps == pytest.approx(4 / 15 * 10)


def test_frame_list_padding_and_subsampling(tmp_path):
    names = [save_frame(tmp_path / f"f{i}.png", i) for i in range(5)]
    names[1] = (tmp_path / "f1.png").read_bytes()  # any image source works as a frame
    names[2] = {"bytes": None, "path": "f2.png"}
    # 3 frames: taken as sampled at fps, padded to an even count with the last frame
    padded = video.load_video(names[:3], tmp_path, fps=2.0)
    assert which_frames(padded) == [0, 1, 2, 2] and padded.fps == 2.0
    # 5 frames with a cap of 4: linspace(0, 4, 4) -> 0, 1, 3, 4; they span the same time, so fps 2 * 4 / 5
    capped = video.load_video(names, tmp_path, fps=2.0, max_frames=4)
    assert which_frames(capped) == [0, 1, 3, 4] and capped.fps == pytest.approx(1.6)
    # every frame takes the first frame's size, whatever its own
    Image.new("RGB", (90, 30), colour(9)).save(tmp_path / "wide.png")
    mixed = video.load_video(["f0.png", "wide.png"], tmp_path)
    assert {frame.size for frame in mixed.frames} == {(616, 448)}  # 64x48, as in the test above
    assert video.video_shape(["f0.png", "wide.png", "f3.png"], tmp_path) == (4, 616, 448)


def test_frame_size_budget():
    """fetch_video's per-frame budget, worked by hand for a 1280x720 video (921600 px a frame)."""
    # 6 frames: budget min(602112, 90316800 / 6 * 2) = 602112; sides / sqrt(921600 / 602112) = 1.2372:
    # 720 -> 581.9 -> 560, 1280 -> 1034.6 -> 1008 (rounded down to multiples of 28)
    assert video.video_frame_size(1280, 720, 6) == (1008, 560)
    # 600 frames: budget 90316800 / 600 * 2 = 301056; sides / 1.7496: 720 -> 411.5 -> 392, 1280 -> 731.6 -> 728
    assert video.video_frame_size(1280, 720, 600) == (728, 392)
    # 2000 frames, min_pixels 512*512: 90316800 / 2000 * 2 = 90317 is under the floor int(1.05 * 262144) = 275251;
    # sides / 1.8298: 720 -> 393.5 -> 392, 1280 -> 699.5 -> 672
    assert video.video_frame_size(1280, 720, 2000, min_pixels=512 * 512) == (672, 392)
    # a size the processor would resize again (its video range here is 100352..200000 px) is refused
    with pytest.raises(ValueError, match="video pixel range 100352..200000"):
        video.video_frame_size(1280, 720, 6, processor_pixels=(100352, 200000))


def test_same_as_qwen_vl_utils():
    """The frame counts, indices and frame sizes are qwen-vl-utils' own (what EasyR1 calls), over a grid of
    durations, rates and sizes (qwen-vl-utils is in the requirements as this test's reference)."""
    import torch
    from qwen_vl_utils import vision_process as qwen
    for total in [1, 2, 3, 5, 8, 30, 31, 250, 1001, 20000]:
        for source_fps in [1, 7.5, 10, 29.97, 60]:
            for ele in [{"fps": 2.0}, {"fps": 0.5, "max_frames": 9}, {"fps": 2.0, "max_frames": 768}]:
                try:
                    expected = qwen.smart_nframes(ele, total_frames=total, video_fps=source_fps)
                except ValueError:
                    with pytest.raises(ValueError, match="cannot be sampled"):
                        video.sample_count(total, source_fps, ele["fps"], ele.get("max_frames", 768))
                    continue
                assert video.sample_count(total, source_fps, ele["fps"], ele.get("max_frames", 768)) == expected
                assert video.sample_indices(total, expected) == \
                    torch.linspace(0, total - 1, expected).round().long().tolist()
    for width, height in [(64, 48), (640, 360), (1920, 1080), (300, 4000), (1000, 1000), (13, 2000)]:
        for frames in [4, 100, 700, 3000]:
            # fetch_video's budget: its per-frame cap, its share of the total, its floor, then a given max_pixels
            for min_pixels, given_max in [(qwen.VIDEO_MIN_TOKEN_NUM * 28 * 28, None), (512 * 512, 2048 * 2048),
                                          (56 * 56, None)]:  # the last: a side under 14 px stays 28 px
                budget = max(min(qwen.VIDEO_MAX_TOKEN_NUM * 28 * 28, qwen.MODEL_SEQ_LEN * 28 * 28 * 0.9 / frames * 2),
                             int(min_pixels * 1.05))
                h, w = qwen.smart_resize(height, width, 28, min_pixels, min(given_max or budget, budget))
                assert video.video_frame_size(width, height, frames, min_pixels,
                                              processor_pixels=data.QWEN_PIXELS) == (w, h)


def test_video_metadata_is_the_sampled_video(tmp_path):
    """The metadata presents the sampled frames as the whole video: transformers reads sampled_fps = fps from it
    (so second_per_grid_ts = 2 / fps) and vLLM reads do_sample_frames=False: nothing samples again."""
    from transformers.video_utils import VideoMetadata
    clip = video.Video([Image.new("RGB", (56, 56))] * 4, 1.6)
    meta = clip.metadata()
    assert meta == dict(fps=1.6, total_num_frames=4, frames_indices=[0, 1, 2, 3], duration=2.5,
                        video_backend="pyav", do_sample_frames=False)
    hf = VideoMetadata(**{k: v for k, v in meta.items() if k != "do_sample_frames"})
    assert hf.sampled_fps == pytest.approx(1.6)


# --- the processor sees what the dataset counted -------------------------------------------------------

def test_processor_inputs_tokens_and_time(tmp_path, processor):
    write_video(tmp_path / "clip.mp4")
    for i in range(3):
        save_frame(tmp_path / f"f{i}.png", i, size=(90, 40))
    path = write_rows(tmp_path / "train.jsonl", [
        {"videos": "clip.mp4", "problem": "Which emotion?", "answer": "joy"},
        {"videos": [["f0.png", "f1.png", "f2.png"]], "problem": "Which <video> emotion?", "answer": "fear"},
    ])
    dataset = data.PromptDataset(path, processor, template="none", video_fps=2.0,
                                 video_min_pixels=128 * 28 * 28)  # the arithmetic below uses this floor
    prompts = dataset.get_batch([0, 1])
    assert [len(p.videos[0].frames) for p in prompts] == [6, 4]
    assert prompts[0].text.count(VIDEO_PAD) == 1  # one unexpanded pad per video, like images
    # frame list: 90x40 scaled by sqrt(100352 / 3600) = 5.2797 -> 475.2 x 211.2 -> 476 x 224 (multiples of 28)
    assert prompts[1].videos[0].frames[0].size == (476, 224)
    for prompt in prompts:
        clip = prompt.videos[0]
        out = data.processor_inputs(processor, prompt.text, None, prompt.videos)  # one prompt, no images
        pads = int((out["input_ids"] == processor.video_token_id).sum())
        width, height = clip.frames[0].size
        # (T / 2) * (H / 28) * (W / 28) tokens, from the headers at load, from the frames, and from the processor
        expected = len(clip.frames) // 2 * (height // 28) * (width // 28)
        assert pads == expected == video.video_token_count(clip, processor)
        assert dataset._header_length(dataset.rows[prompt.index], {}) == prompt.num_tokens == out["input_ids"].shape[1]
        assert out["video_grid_thw"].tolist() == [[len(clip.frames) // 2, height // 14, width // 14]]
        assert out["second_per_grid_ts"].tolist() == pytest.approx([2 / clip.fps])  # temporal_patch_size / fps
        assert out["pixel_values_videos"].shape[0] == len(clip.frames) // 2 * (height // 14) * (width // 14)
    batch = data.encode(processor, prompts)  # both prompts at once, padded
    assert batch["input_ids"].shape == (2, max(p.num_tokens for p in prompts))
    assert batch["second_per_grid_ts"].tolist() == pytest.approx([1.0, 1.0])  # 2 / 2.0 fps, both
    # over max_prompt_length: dropped at load, with its length, as image rows are
    shorter = data.PromptDataset(path, processor, template="none", max_prompt_length=prompts[0].num_tokens - 1,
                                 video_min_pixels=128 * 28 * 28)
    assert shorter.dropped_long == [(f"{path}:1", prompts[0].num_tokens)]
    assert len(shorter) == 1


def test_build_messages_and_images_unchanged(processor):
    assert data.build_messages("<image>a<video>b<image>", "none")[0]["content"] == [
        {"type": "image"}, {"type": "text", "text": "a"}, {"type": "video"}, {"type": "text", "text": "b"},
        {"type": "image"}]
    # image-only text: exactly EasyR1's split on "<image>" (the code before videos)
    for text in ["<image>Which?", "a<image><image>b", "no tag", "<image>"]:
        easyr1 = [item for i, piece in enumerate(text.split("<image>"))
                  for item in ([{"type": "image"}] if i else []) + ([{"type": "text", "text": piece}] if piece else [])]
        assert data.build_messages(text, "none")[0]["content"] == easyr1
    out = data.processor_inputs(processor, ["just text"])  # no images, no videos
    assert "pixel_values" not in out and "pixel_values_videos" not in out


# --- R1-Omni's layout and audio --------------------------------------------------------------------------

def test_r1_omni_layout(tmp_path, processor):
    write_video(tmp_path / "clip.mp4")
    human = f"<video>\n<audio>\n{R1_OMNI_QUESTION}\n{rows.R1_OMNI_INSTRUCTION}"
    path = write_rows(tmp_path / "r1omni.json", [
        {"video": "clip.mp4", "conversations": [{"from": "human", "value": human},
                                                {"from": "gpt", "value": "<answer> happy </answer>"}]},
        {"video": "clip.mp4", "conversations": [{"from": "human", "value": f"<video>\n<audio>\n{R1_OMNI_QUESTION}"},
                                                {"from": "gpt", "value": " sad\n"}]},
    ])
    with pytest.warns(UserWarning, match=r"removed the <audio> tag from 2 row\(s\).*omni model"):
        dataset = data.PromptDataset(path, processor, template="r1-omni")
    assert dataset.audio_dropped == 2
    assert dataset.labels == ["happy", "sad"]
    assert [(row.problem, row.answer) for row in dataset.rows] == [(f"<video>\n{R1_OMNI_QUESTION}", "happy"),
                                                                  (f"<video>\n{R1_OMNI_QUESTION}", "sad")]
    prompt = dataset[0]
    assert prompt.text.count(rows.R1_OMNI_INSTRUCTION) == 1  # the template's, not twice
    assert f"{VIDEO_PAD}<|vision_end|>\n{R1_OMNI_QUESTION}\n{rows.R1_OMNI_INSTRUCTION}" in prompt.text
    assert "<audio>" not in prompt.text and len(prompt.videos[0].frames) == 6


def test_audio_tag_in_a_jsonl_row(tmp_path, processor):
    write_video(tmp_path / "clip.mp4", num_frames=8)
    path = write_rows(tmp_path / "train.jsonl", [
        {"videos": ["clip.mp4"], "problem": "<audio> \n<video>Which?", "answer": "joy"},
        {"videos": ["clip.mp4"], "problem": "<video>Which?", "answer": "joy"},
    ])
    with pytest.warns(UserWarning, match="from 1 row"):
        dataset = data.PromptDataset(path, processor, template="none")
    assert dataset.audio_dropped == 1 and dataset.rows[0].problem == "<video>Which?"


# --- refusals and bad rows ----------------------------------------------------------------------------------

def test_mixed_image_and_video_dataset_refused(tmp_path, processor):
    write_video(tmp_path / "clip.mp4", num_frames=8)
    save_frame(tmp_path / "a.png", 0)
    path = write_rows(tmp_path / "mixed.jsonl", [
        {"images": ["a.png"], "problem": "Which?", "answer": "joy"},
        {"videos": ["clip.mp4"], "problem": "Which?", "answer": "joy"},
    ])
    with pytest.raises(data.DataError, match=rf"image rows \({path}:1\) and video rows \({path}:2\).*FSDP"):
        data.PromptDataset(path, processor, skip_bad=True)  # not a bad row: the whole dataset
    both = write_rows(tmp_path / "both.jsonl", [
        {"images": ["a.png"], "videos": ["clip.mp4"], "problem": "<image><video>Which?", "answer": "joy"}])
    with pytest.raises(data.DataError, match=rf"{both}:1: the row has both 'images' and 'videos'.*vision tower"):
        data.PromptDataset(both, processor)


def test_bad_videos_name_the_row_or_are_skipped(tmp_path, processor):
    write_video(tmp_path / "clip.mp4", num_frames=8)
    write_video(tmp_path / "one.mp4", num_frames=1)
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    rows = [
        {"videos": ["clip.mp4"], "problem": "Which?", "answer": "joy"},
        {"videos": ["missing.mp4"], "problem": "Which?", "answer": "joy"},
        {"videos": ["corrupt.mp4"], "problem": "Which?", "answer": "joy"},
        {"videos": ["one.mp4"], "problem": "Which?", "answer": "joy"},  # a single frame cannot make a pair
        {"videos": [["clip.mp4"]], "problem": "Which?", "answer": "joy"},  # a video file is no frame image
        {"videos": [[]], "problem": "Which?", "answer": "joy"},
        {"videos": [], "problem": "Which?", "answer": "joy"},
    ]
    path = write_rows(tmp_path / "train.jsonl", rows)
    with pytest.raises(data.DataError, match=f"{path}:7: no video in 'videos'"):
        data.PromptDataset(path, processor)
    dataset = data.PromptDataset(path, processor, skip_bad=True)
    assert dataset.skipped == [(f"{path}:7", "no video in 'videos'")]
    for index, reason in [(1, "cannot use video missing.mp4: OSError: no such file"),
                          (2, "cannot use video corrupt.mp4"),
                          (3, "cannot use video one.mp4: ValueError: a video of 1"),
                          (4, "cannot use video <list of 1 frames>"), (5, "cannot use video <list of 0 frames>")]:
        with pytest.raises(data.DataError, match=rf"{path}:{index + 1}: {reason}"):
            dataset[index]
    assert len(dataset.get_batch(range(len(dataset)))) == 1  # only the good row
    assert [where for where, _ in dataset.skipped[1:]] == [f"{path}:{n}" for n in range(2, 7)]
    assert len(dataset.get_batch(range(len(dataset)))) == 1 and len(dataset.skipped) == 6  # counted once


def test_video_tag_count_must_match(tmp_path, processor):
    write_video(tmp_path / "clip.mp4", num_frames=8)
    save_frame(tmp_path / "a.png", 0)
    videos = write_rows(tmp_path / "v.jsonl", [
        {"videos": ["clip.mp4"], "problem": "<video>Which?", "answer": "joy"},
        {"videos": ["clip.mp4"], "problem": "<video><video>Which?", "answer": "joy"},
    ])
    with pytest.raises(data.DataError, match=f"{videos}:2: the problem has 2 <video> tags but the row has 1 videos"):
        data.PromptDataset(videos, processor)
    images = write_rows(tmp_path / "i.jsonl", [{"images": ["a.png"], "problem": "<video>Which?", "answer": "joy"}])
    with pytest.raises(data.DataError, match=f"{images}:1: the problem has 1 <video> tags but the row has 0 videos"):
        data.PromptDataset(images, processor)


def test_check_command_counts_video_rows_and_audio(tmp_path, tiny_model_dir, processor, monkeypatch, capsys):
    write_video(tmp_path / "clip.mp4", num_frames=8)
    path = write_rows(tmp_path / "train.jsonl", [
        {"videos": "clip.mp4", "problem": "<video>\n<audio>\nWhich?", "answer": "joy"},
        {"videos": "clip.mp4", "problem": "Which?", "answer": "fear"},
    ])
    monkeypatch.setattr(sys, "argv", ["data.py", "check", str(path), "--model", str(tiny_model_dir),
                                      "--video-fps", "1", "--video-max-frames", "4"])
    with pytest.warns(UserWarning, match="<audio>"):
        data.main()
    report = json.loads(capsys.readouterr().out.split("\n}\n")[0] + "}")
    assert report["video_rows"] == 2 and report["audio_dropped"] == 1 and report["usable"] == 2
    # the run scripts hand their config's video fields over with video_kwargs
    cfg = SimpleNamespace(video_fps=1.0, video_min_pixels=3136, video_max_pixels=12544, video_max_frames=16, seed=0)
    settings = video.video_kwargs(cfg)
    assert settings == dict(video_fps=1.0, video_min_pixels=3136, video_max_pixels=12544, video_max_frames=16)
    with pytest.warns(UserWarning, match="<audio>"):
        dataset = data.PromptDataset(path, processor, **settings)
    # 8 frames / 10 fps * 1 fps = 0.8 -> 4 frames (FPS_MIN_FRAMES); 64x48 -> multiples of 28: 56x56 = 3136 px,
    # within [3136, 12544]
    assert dataset.has_videos and [frame.size for frame in dataset[1].videos[0].frames] == [(56, 56)] * 4


def test_response_key_picks_the_target_column(tmp_path):
    """sft.py --response-key would train the wrong layout (the video demo carries a SET and an R1-Omni
    target per row) if the column were not the one named, or if "" did not mean none."""
    path = write_rows(tmp_path / "t.jsonl", [{"images": ["a.png"], "problem": "q", "answer": "joy",
                                              "response": "set answer", "response_r1_omni": "r1 answer"}])
    assert [r.response for r in data.read_rows(path)] == ["set answer"]
    assert [r.response for r in data.read_rows(path, response_key="response_r1_omni")] == ["r1 answer"]
    assert [r.response for r in data.read_rows(path, response_key="")] == [None]
