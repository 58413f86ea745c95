"""Build the embedded tiny Qwen2.5-VL: a real model folder, made offline in seconds.

The tests and the CPU demo cannot download weights, so this script writes a complete Hugging Face
model folder from nothing: a Qwen2_5_VLConfig scaled down to about 0.6M parameters with random
weights, a byte-level BPE tokenizer trained on the spot (with the Qwen2.5-VL special tokens and chat
template), and a processor with the image and video processors. The folder loads with
`from_pretrained` in transformers and with vLLM, exactly like Qwen/Qwen2.5-VL-3B-Instruct does, so
every code path (chat template, image placeholders, mrope positions, weight names) is the real one.

Constraints measured on the CPU stack (see DESIGN.md):
- text head_dim must be one vLLM's CPU attention supports (32, 64, ...; 16 fails);
- `mrope_section` must sum to head_dim / 2;
- `vocab_size` must equal len(tokenizer) exactly (vLLM and the processor disagree otherwise);
- the processor must include the video processor (vLLM's Qwen2.5-VL processor requires it).

    python tiny.py                      # -> .cache/tiny-qwen2.5-vl (the default the demo uses)
    python tiny.py --out /tmp/tiny --seed 1
"""

import argparse
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent
DEFAULT_DIR = REPO / ".cache" / "tiny-qwen2.5-vl"

# The Qwen2.5-VL special tokens, in the order Qwen assigns them (ids 151643.. in the real model;
# here they are simply the first ids). `<|image_pad|>` is the placeholder the processor expands
# into one token per merged 28x28 image patch.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# Qwen2.5-VL-Instruct's chat template (default system prompt, images and videos as placeholders).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Architecture. Text: hidden 64 with 2 heads -> head_dim 32 (vLLM CPU attention supports it);
# mrope_section [4, 6, 6] sums to 16 = head_dim / 2 (temporal, height, width rotary pairs).
# Vision: Qwen2.5-VL's window-attention tower with 2 blocks, the second one full attention.
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=4096, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]})
VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
              spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1])


def _tokenizer_corpus():
    """Text the BPE is trained on: the prompts, label names and SET tags, so they get short ids."""
    texts = [p.read_text() for p in sorted((REPO / "prompts").rglob("*.txt"))]
    words = " ".join(p.read_text().replace("\n", " ") for p in sorted((REPO / "prompts" / "labels").glob("*.txt")))
    texts += [words] * 20
    tags = "<step1> </step1> <step2> </step2> <step3> </step3> <think> </think> \\boxed{} yes no None"
    texts += [tags] * 20
    import data  # the demo's target responses, so the demo's rollouts are short
    texts += [data.demo_response(label) for label in data.DEMO_COLOURS] * 20
    texts.append("The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}<>/\\|-_+=*&^%$#@~`")
    return texts


def build_tokenizer(vocab_size=1024):
    """A byte-level BPE (like Qwen's) with the Qwen2.5-VL special tokens, as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=SPECIAL_TOKENS[1:], model_max_length=32768)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_model(out_dir=DEFAULT_DIR, seed=0, init_std=0.2, overwrite=False):
    """Write the tiny model folder (config, safetensors, tokenizer, processor) and return its path.

    `init_std` is larger than the usual 0.02 on purpose: at 0.02 a 2-layer model's greedy output is
    one token repeated whatever the image, which makes "two engines agree" a weak check and gives
    sampling nothing to explore; at 0.2 the output depends on the image and the prompt.
    Returns at once if the folder is already complete, so tests and the demo can call it freely.
    Written to a temporary folder and renamed at the end, so a crash never leaves a half-built model.
    """
    import torch
    from transformers import (GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    out_dir = Path(out_dir)
    # the recipe (architecture, seed, tokenizer corpus) is recorded; a folder built from another
    # recipe (an older version of this file) is rebuilt rather than silently reused
    import hashlib
    recipe = hashlib.sha256(json.dumps([TEXT, VISION, seed, init_std, _tokenizer_corpus()]).encode()).hexdigest()[:16]
    done = out_dir / "tiny.json"
    if done.exists() and json.loads(done.read_text()).get("recipe") == recipe and not overwrite:
        return out_dir
    tmp_dir = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    tmp_dir.mkdir(parents=True, exist_ok=True)

    tok = build_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    # Qwen's defaults for the pixel range; data.py resizes images into the run's own range
    # (multiples of 28) before they reach the processor, which then leaves them as they are.
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 16384, patch_size=14,
                                            temporal_patch_size=2, merge_size=2)
    video_processor = Qwen2VLVideoProcessor(patch_size=14, temporal_patch_size=2, merge_size=2)
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tok,
                                    video_processor=video_processor, chat_template=CHAT_TEMPLATE)

    config = Qwen2_5_VLConfig(
        text_config=dict(TEXT, vocab_size=len(tok), initializer_range=init_std, bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(VISION, out_hidden_size=TEXT["hidden_size"], initializer_range=init_std),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True, initializer_range=init_std)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).float()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"], do_sample=False)
    model.save_pretrained(tmp_dir)
    processor.save_pretrained(tmp_dir)
    (tmp_dir / "tiny.json").write_text(json.dumps({"seed": seed, "init_std": init_std, "recipe": recipe, "built_by": "tiny.py",
                                                   "parameters": sum(p.numel() for p in model.parameters())}))
    if out_dir.exists():  # overwrite: swap the finished folder in
        import shutil
        shutil.rmtree(out_dir)
    tmp_dir.rename(out_dir)
    return out_dir


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(DEFAULT_DIR), help="folder to write (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    parser.add_argument("--init-std", type=float, default=0.2, help="std of the random weights (default: 0.2)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if the folder exists")
    args = parser.parse_args()
    path = build_tiny_model(args.out, seed=args.seed, init_std=args.init_std, overwrite=args.overwrite)
    print(f"tiny Qwen2.5-VL at {path} ({json.loads((path / 'tiny.json').read_text())['parameters']:,} parameters)")
