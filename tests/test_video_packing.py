"""Video in the trainer's forward: Qwen2.5-VL's 3-D positions for clips (packing.mrope_positions) and the
packed micro-batch (collate + response_logprobs) on video prompts, against plainly padded sequences.

One process, the tiny model unsharded: what is checked here is the layout and the positions, which
FSDP2 does not change (tests/test_video_train.py runs video through FSDP2 and vLLM)."""

import numpy as np
import pytest
import torch
from PIL import Image

import data
import packing
import video
from packing import Sample, collate, encode_prompts, mrope_positions, response_logprobs


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    packed = AutoModelForImageTextToText.from_pretrained(
        tiny_model_dir, dtype=torch.float32,
        attn_implementation={"text_config": packing.register_shared_prompt_attention(), "vision_config": "sdpa"}).eval()
    plain = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                        attn_implementation="sdpa").eval()
    return processor, packed, plain


def clip(seed, frames=8, size=56, fps=2.0):
    """A video.Video of random frames, already at a size the tiny model's processor keeps."""
    rng = np.random.default_rng(seed)
    return video.Video([Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(frames)], fps)


def test_positions_equal_transformers_for_images(tiny):
    """For images (one time step) the positions must be transformers' own, or every image run would move."""
    processor, model, _ = tiny
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (56 * (k + 1), 84, 3), dtype=np.uint8)) for k in range(2)]
    content = [{"type": "image"}, {"type": "text", "text": "a b c"}, {"type": "image"}, {"type": "text", "text": "What?"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
    batch = processor(text=[text, text.replace("What?", "What now, then?")], images=images + images, padding=True,
                      return_tensors="pt")
    mask = batch["attention_mask"]
    theirs, their_deltas = model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                                      image_grid_thw=batch["image_grid_thw"], attention_mask=mask)
    ours, our_deltas = mrope_positions(model.config, batch["input_ids"], batch["mm_token_type_ids"],
                                       batch["image_grid_thw"], attention_mask=mask)
    assert torch.equal(ours, theirs * mask) and torch.equal(our_deltas, their_deltas)


def test_positions_of_a_clip_by_hand(tiny):
    """Text after a clip must continue after the clip's last time step, as vLLM and the released model
    place it; transformers 5.19 restarts it at start + max(h, w) (inside the clip's time range)."""
    _, model, _ = tiny
    assert model.config.vision_config.tokens_per_second == 4 and model.config.vision_config.spatial_merge_size == 2
    # 3 text tokens, a clip of 2 temporal patches x (4 x 4 patches -> 2 x 2 merged), 2 text tokens
    types = torch.tensor([[0, 0, 0] + [2] * 8 + [0, 0]])
    ids = torch.zeros_like(types)
    positions, deltas = mrope_positions(model.config, ids, types, video_grid_thw=torch.tensor([[2, 4, 4]]),
                                        second_per_grid_ts=torch.tensor([0.5]))
    # the clip starts at 3; time step k sits at 3 + int(k * 0.5 s * 4 tokens/s) = 3, 5; rows 3 + (0, 1),
    # columns 3 + (0, 1); the text after it starts at the largest position so far + 1 = 6
    assert positions[:, 0].tolist() == [
        [0, 1, 2, 3, 3, 3, 3, 5, 5, 5, 5, 6, 7],  # time
        [0, 1, 2, 3, 3, 4, 4, 3, 3, 4, 4, 6, 7],  # height
        [0, 1, 2, 3, 4, 3, 4, 3, 4, 3, 4, 6, 7],  # width
    ]
    assert deltas.tolist() == [[8 - 13]]  # largest + 1 - length
    # one second per temporal patch: time steps 3, 7; the text after the clip starts at 8, not at 3 + 2 = 5
    positions, _ = mrope_positions(model.config, ids, types, video_grid_thw=torch.tensor([[2, 4, 4]]),
                                   second_per_grid_ts=torch.tensor([1.0]))
    assert positions[0, 0, 3:11].tolist() == [3, 3, 3, 3, 7, 7, 7, 7] and positions[:, 0, 11:].tolist() == [[8, 9]] * 3


def padded_logprobs(model, item, response):
    """Log-probs of `response` after one encoded prompt, as a plain forward of [prompt | response] with
    the model's own causal attention: the reference the packed layout must reproduce."""
    ids = torch.cat([item["input_ids"], torch.tensor(response)])[None]
    types = torch.cat([item["mm_token_type_ids"], torch.zeros(len(response), dtype=torch.long)])[None]
    positions, _ = mrope_positions(model.config, ids, types, video_grid_thw=item["video_grid_thw"],
                                   second_per_grid_ts=item["second_per_grid_ts"])
    with torch.no_grad():
        logits = model(input_ids=ids, position_ids=positions, pixel_values_videos=item["pixel_values_videos"],
                       video_grid_thw=item["video_grid_thw"], use_cache=False).logits[0].float()
    start = len(item["input_ids"])
    return torch.log_softmax(logits[start - 1:-1], -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def test_packed_video_rows_equal_padded_rows(tiny):
    """Packing two clips' prompts with their responses in one micro-batch (shared prompt, responses
    unseen by their siblings, positions after the prompt) must score every response exactly as a
    plain forward of that response alone does."""
    processor, packed, plain = tiny
    prompts = []
    for k, (frames, question) in enumerate([(8, "What emotion?"), (4, "Which feeling does this clip carry, then?")]):
        content = [{"type": "video"}, {"type": "text", "text": question}]
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False)
        prompts.append(data.Prompt(k, question, "x", text, [], [], videos=[clip(k, frames)]))
    encoded = encode_prompts(processor, prompts)
    for p, item in zip(prompts, encoded):  # the processor kept the frames: 56 x 56 -> 2 x 2 merged patches
        assert item["video_grid_thw"].tolist() == [[len(p.videos[0].frames) // 2, 4, 4]]
        assert item["second_per_grid_ts"].tolist() == [1.0]  # temporal patch of 2 frames at 2 fps
    rng = np.random.default_rng(1)
    samples = [Sample(p, rng.integers(3, 500, n).tolist(), []) for p, n in [(0, 5), (1, 9), (0, 2), (1, 1), (0, 7)]]
    batch = collate(samples, encoded, pad_id=0, device=torch.device("cpu"))
    with torch.no_grad():
        logp = response_logprobs(packed, batch, temperature=1.0)
    for b, s in enumerate(samples):
        expected = padded_logprobs(plain, encoded[s.prompt], s.response_ids)
        torch.testing.assert_close(logp[b, :len(s.response_ids)], expected, rtol=0, atol=1e-5)
