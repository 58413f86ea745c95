"""Run under torchrun (2 ranks): train the policy a little, sync it into each rank's vLLM engine, and
write what the engine and the FSDP policy each produce, so tests/test_train.py can compare them.

    torchrun --nproc_per_node 2 tests/dist_sync_check.py MODEL_DIR DATA.jsonl OUT_DIR
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import data  # noqa: E402
import common  # noqa: E402
import model as modeling  # noqa: E402
import packing  # noqa: E402
import engines  # noqa: E402
import rollout  # noqa: E402
import train_grpo as tg  # noqa: E402

NEW_TOKENS = 12


@torch.no_grad()
def fsdp_greedy(policy, encoded, pad_id, device):
    """Greedy decoding with the FSDP2 policy itself: NEW_TOKENS forwards on every rank (in step)."""
    tokens = []
    for _ in range(NEW_TOKENS):
        batch = packing.collate([packing.Sample(0, tokens + [pad_id], [])], encoded, pad_id, device)
        position_ids, _ = policy.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                                      image_grid_thw=batch["image_grid_thw"])  # one sequence, no padding
        # the last real column is the one before the placeholder pad we appended
        logits = policy(input_ids=batch["input_ids"], position_ids=position_ids, pixel_values=batch["pixel_values"],
                        image_grid_thw=batch["image_grid_thw"], logits_to_keep=2, use_cache=False).logits[0, 0]
        tokens.append(int(logits.argmax()))
    return tokens


def main():
    model_dir, train_file, out_dir = sys.argv[1:4]
    rank, world_size, device = common.setup_distributed()
    check(model_dir, train_file, out_dir, rank, device)
    if dist.is_initialized():
        dist.destroy_process_group()


def check(model_dir, train_file, out_dir, rank, device):
    """The whole check inside a process group set up by the caller (also tests/dist_runs.py)."""
    cfg = tg.parse_config(["--demo", "--model", model_dir, "--train-files", train_file, "--val-files", "",
                           "--kl-coef", "0", "--max-response-length", str(NEW_TOKENS)])
    torch.manual_seed(0)
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(model_dir)
    pad_id = processor.tokenizer.pad_token_id
    dataset = data.PromptDataset(train_file, processor, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    prompt = dataset[rank]  # a different prompt (and image) on each rank
    encoded = packing.encode_prompts(processor, [prompt])
    request = engines.Request(prompt.text, prompt.prompt_ids, prompt.images)

    policy = modeling.load_model(cfg.model, device, trainable=True, precision=cfg.precision, gradient_checkpointing=cfg.gradient_checkpointing)
    torch.manual_seed(1000 + rank)  # a per-rank seed, as the trainer sets: the engine's start must keep it
    rng_before = torch.get_rng_state()
    engine = engines.VLLMEngine(model_dir, processor.tokenizer.convert_tokens_to_ids("<|image_pad|>"), seed=cfg.seed,
                                max_model_len=cfg.max_prompt_length + cfg.max_response_length)
    rng_kept = torch.equal(torch.get_rng_state(), rng_before)
    # the engine starts asleep, and every step of the choreography is checked, on CPU too
    misuse = {}
    for name, call in (("generate_asleep", lambda: engine.generate([request], 1, 0.0, 1.0, 2, seed=0)),
                       ("load_asleep", lambda: engine.load_weights(rollout.full_weights(policy)))):
        try:
            call()
        except RuntimeError as e:
            misuse[name] = str(e)
    engine.wake_up(["weights"])
    engine.load_weights(rollout.full_weights(policy))
    try:  # forgetting reset_caches before waking the KV cache
        engine.wake_up(["kv_cache"])
    except RuntimeError as e:
        misuse["kv_before_reset"] = str(e)
    engine.reset_caches()
    engine.wake_up(["kv_cache"])
    before = engine.generate([request], 1, 0.0, 1.0, NEW_TOKENS, seed=0)[0][0][0]

    # a few large updates on sampled responses, so the weights (and the greedy output) really move
    optimizer = torch.optim.AdamW(policy.parameters(), lr=2e-2)
    sampled = engine.generate([request], 4, 1.0, 1.0, NEW_TOKENS, seed=1)[0]
    for _ in range(3):
        batch = packing.collate([packing.Sample(0, ids, lps) for ids, lps in sampled], encoded, pad_id, device)
        loss = -(packing.response_logprobs(policy, batch, 1.0) * batch["response_mask"]).sum() / batch["response_mask"].sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    engine.sleep()
    try:
        engine.generate([request], 1, 0.0, 1.0, 2, seed=0)
    except RuntimeError as e:
        misuse["generate_after_sleep"] = str(e)
    engine.wake_up(["weights"])
    engine.load_weights(rollout.full_weights(policy))
    engine.reset_caches()
    engine.wake_up(["kv_cache"])
    after_ids, after_logp = engine.generate([request], 1, 0.0, 1.0, NEW_TOKENS, seed=0)[0][0]
    policy.eval()
    fsdp_ids = fsdp_greedy(policy, encoded, pad_id, device)
    with torch.no_grad():
        batch = packing.collate([packing.Sample(0, after_ids, after_logp)], encoded, pad_id, device)
        fsdp_logp = packing.response_logprobs(policy, batch, 1.0)[0].tolist()
    # the reflective re-ask through the same engine: a response with SET steps, one without (the
    # reference's "Answer 'None'" question), and ones whose words look like image slots
    texts = ["<step1>A red wall.</step1><step2>It feels tense.</step2><step3>negative, high</step3>\\boxed{anger}",
             "no steps here \\boxed{anger}",
             "<step1>An <image> and an <image>.</step1><step2>Calm.</step2><step3>positive</step3>\\boxed{awe}",
             "<step1>A <|image_pad|> wall.</step1><step2>Tense.</step2><step3>negative</step3>\\boxed{anger}"]
    reflections = rollout.ask_reflections(engine, processor, ("text", "image"), texts, [prompt.images] * 4,
                                          dataset.labels, temperature=cfg.reflect_temperature,
                                          top_p=cfg.reflect_top_p, max_tokens=cfg.reflect_max_tokens,
                                          limit=tg.reask_prompt_limit(cfg), seed=5)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(
        {"before": before, "after": after_ids, "after_logp": after_logp, "fsdp_greedy": fsdp_ids,
         "fsdp_logp": fsdp_logp, "reflections": reflections, "rng_kept": rng_kept, "misuse": misuse}))
    engine.close()


if __name__ == "__main__":
    main()
    common.exit_process()  # as the stage scripts end
