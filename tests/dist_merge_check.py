"""Run under torchrun (2 ranks): export a training run's newest checkpoint as a Hugging Face folder (rank 0,
export.export_hf_folder), then compare the checkpoint, loaded into the FSDP2 policy, with that folder loaded
by transformers and by vLLM. Rank 0 writes what each produced.

    torchrun --nproc_per_node 2 tests/dist_merge_check.py BASE_MODEL RUN_DIR CHECKPOINT MERGED DATA.jsonl OUT.pt

(tests/dist_runs.py runs the same check inside a longer launch; tests/test_merge_evaluate.py reads OUT.pt.)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import data  # noqa: E402
from checkpoint import load_checkpoint  # noqa: E402
from export import export_hf_folder  # noqa: E402
import common  # noqa: E402
import model as modeling  # noqa: E402
import packing  # noqa: E402
import engines  # noqa: E402
import train_grpo as tg  # noqa: E402
from dist_sync_check import NEW_TOKENS, fsdp_greedy  # noqa: E402


def logits_for(model, batch):
    """Full-vocabulary logits at the response positions (fp32)."""
    position_ids, _ = model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                                 image_grid_thw=batch["image_grid_thw"])  # one sequence, no padding
    width = batch["response_ids"].shape[1]
    return model(input_ids=batch["input_ids"], position_ids=position_ids,
                 pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                 logits_to_keep=width + 1, use_cache=False).logits[:, :-1].float()


def main():
    rank, world_size, device = common.setup_distributed()
    check(*sys.argv[1:7], rank, device)
    if dist.is_initialized():  # the vLLM engine's shutdown may already have torn the process groups down
        dist.destroy_process_group()


@torch.no_grad()
def check(base, run, checkpoint, merged, train_file, out_file, rank, device):
    """The whole check inside a process group set up by the caller."""
    cfg = tg.parse_config(["--demo", "--model", base, "--train-files", train_file, "--val-files", "",
                           "--max-response-length", str(NEW_TOKENS)])
    if rank == 0:  # a run folder: its newest checkpoint
        export_hf_folder(run, merged)
    dist.barrier()
    from transformers import AutoModelForImageTextToText, AutoProcessor
    processor = AutoProcessor.from_pretrained(base)
    pad_id = processor.tokenizer.pad_token_id
    prompt = data.PromptDataset(train_file, processor, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)[0]
    encoded = packing.encode_prompts(processor, [prompt])

    # the trained policy, as training would resume it: FSDP2 shards loaded from the checkpoint
    policy = modeling.load_model(cfg.model, device, trainable=True, precision=cfg.precision, gradient_checkpointing=cfg.gradient_checkpointing)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    load_checkpoint(policy, optimizer, Path(checkpoint), rank)
    policy.eval()
    greedy = fsdp_greedy(policy, encoded, pad_id, device)
    batch = packing.collate([packing.Sample(0, greedy, [])], encoded, pad_id, device)
    policy_logits = logits_for(policy, batch)

    # the merged folder, in plain transformers and in vLLM
    hf = AutoModelForImageTextToText.from_pretrained(merged, dtype=torch.float32).eval()
    merged_logits = logits_for(hf, batch)
    engine = engines.VLLMEngine(merged, processor.tokenizer.convert_tokens_to_ids("<|image_pad|>"), seed=cfg.seed,
                                max_model_len=cfg.max_prompt_length + cfg.max_response_length)
    engine.wake_up(["weights", "kv_cache"])  # the merged folder's weights, loaded from disk: nothing to push
    vllm_greedy = engine.generate([engines.Request(prompt.text, prompt.prompt_ids, prompt.images)], 1, 0.0, 1.0,
                                  NEW_TOKENS, seed=0)[0][0][0]
    if rank == 0:
        torch.save({"policy_greedy": greedy, "policy_logits": policy_logits, "merged_logits": merged_logits,
                    "vllm_greedy": vllm_greedy}, out_file)
    engine.close()


if __name__ == "__main__":
    main()
    common.exit_process()  # as the stage scripts end
