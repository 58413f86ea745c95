"""modeling.load_model: at world size 2 only rank 0 reads the weights and broadcasts them (tests/dist_model_load.py,
one torchrun launch shared by the tests here), and a frozen reference under bf16 compute is stored in bf16."""

import json

import pytest
import torch
import torch.distributed as dist

import model as modeling
from test_train import torchrun

BUFFERS = ["model.language_model.rotary_emb.inv_freq", "model.language_model.rotary_emb.original_inv_freq",
           "model.visual.rotary_pos_emb.inv_freq", "model.visual.rotary_pos_emb.original_inv_freq"]


def write_mid_model(out):
    """A random Qwen2.5-VL of about 600 MB in fp32 (text hidden 1024, 8 layers, vocab 32000, tied embeddings,
    a small vision tower): large enough that a full copy stands out of a process's memory, with its largest
    tensor (the embedding, 131 MB) about a fifth of it. Filled in place, not through transformers' init."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    config = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=8, num_attention_heads=16,
                         num_key_value_heads=2, vocab_size=32000, max_position_embeddings=4096,
                         bos_token_id=0, eos_token_id=1,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]}),
        vision_config=dict(depth=2, hidden_size=256, intermediate_size=512, num_heads=4, out_hidden_size=1024,
                           fullatt_block_indexes=[1]),
        tie_word_embeddings=True)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.to_empty(device="cpu")
    model.tie_weights()  # to_empty untied them; save_pretrained then writes the embedding once
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.02, generator=generator)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def loaded(tiny_model_dir, tmp_path_factory):
    """What each rank of tests/dist_model_load.py wrote: [rank 0's, rank 1's]."""
    out = tmp_path_factory.mktemp("model_load")
    mid = write_mid_model(out / "mid")
    torchrun("--standalone", "tests/dist_model_load.py", tiny_model_dir, mid, out)
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.parametrize("kind", ["policy", "reference"])
def test_rank0_load_gives_every_rank_the_model_from_pretrained_gives(loaded, kind):
    """If this fails, a rank's shards, buffers (rotary inv_freq, which no state dict carries), tied embeddings,
    attention settings or flags differ from what each rank reading the folder itself would have: training
    would start from other weights than the folder's, or with positions from uninitialised memory."""
    for rank, result in enumerate(loaded):
        check = result[kind]
        assert result["world_size"] == 2
        assert check["names_equal"], rank
        assert check["params_unequal"] == [] and check["dtypes_unequal"] == [], (rank, check)
        assert check["requires_grad_unequal"] == [], (rank, check)
        assert check["buffers"] == sorted(BUFFERS) and check["buffers_unequal"] == [], (rank, check)
        assert check["on_meta"] == [], (rank, check)
        assert check["tied"] and check["tied_before"], (rank, "lm_head and embed_tokens are no longer one parameter")
        assert check["attention"] == check["attention_expected"] == ["shared_prompt", "sdpa"], (rank, check)
        assert check["use_cache"] == [False, False], rank


def test_only_rank0_holds_a_full_copy_while_loading(loaded):
    """If this fails, every rank again reads the whole fp32 model before sharding it: 8 ranks of a node hold
    8 full copies in host RAM at once (about 120 GB for 3B), twice with the reference model.

    Any sharded load leaves a rank its own shards (half the model at world size 2); beyond them, a rank that
    reads the whole model holds at least the other half, one that receives it from rank 0 only the tensor
    being broadcast (here the embedding, a fifth of the model)."""
    memory = [result["memory"] for result in loaded]
    full = memory[0]["full_bytes"]
    assert full > 500e6 and memory[1]["full_bytes"] == full
    assert memory[1]["shard_bytes"] < 0.51 * full
    beyond_shards = (memory[1]["growth_bytes"] - memory[1]["shard_bytes"]) / full
    assert beyond_shards < 0.35, f"rank 1 held {beyond_shards:.2f} x a full copy beyond its shards while loading"
    assert memory[0]["growth_bytes"] >= 0.95 * full, "rank 0 read the weights, so it held them all: not measured?"


def test_bf16_reference_gives_the_same_logprobs_as_an_fp32_one(loaded):
    """If this fails, the reference stored in bf16 (half the memory) gives other KL log-probs than the fp32
    reference it replaces, which FSDP2 cast to bf16 at every all-gather: the KL term would change."""
    for rank, result in enumerate(loaded):
        reference = result["bf16_reference"]
        assert reference["bf16_stored_dtypes"] == ["torch.bfloat16"], rank
        assert reference["fp32_stored_dtypes"] == ["torch.float32"], rank
        assert reference["bf16_stored_buffer_dtypes"] == ["torch.float32"], rank  # rotary frequencies stay fp32
        assert reference["logp_dtype"] == "torch.float32"
        assert reference["equal"], (rank, reference["max_difference"])


def test_world_of_one_reads_the_folder_and_stores_a_bf16_reference(tiny_model_dir, tmp_path):
    """If this fails, a one-process run (the CPU demo, one GPU) loads other weights than the folder's, or its
    reference is not in bf16 under bf16 compute (or the policy is: its master weights must stay fp32)."""
    from transformers import AutoModelForImageTextToText
    plain = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        cpu = torch.device("cpu")
        policy = modeling.load_model(tiny_model_dir, cpu, trainable=True, precision="bf16")
        reference = modeling.load_model(tiny_model_dir, cpu, trainable=False, precision="bf16")
        auto_reference = modeling.load_model(tiny_model_dir, cpu, trainable=False)  # CPU, auto: fp32
        for model, dtype in ((policy, torch.float32), (reference, torch.bfloat16), (auto_reference, torch.float32)):
            for name, param in model.named_parameters():
                expected = plain.get_parameter(name).detach()
                assert param.dtype == dtype, name
                assert torch.equal(param.full_tensor(), expected.to(dtype)), name
            for name, buffer in model.named_buffers():
                assert buffer.dtype == torch.float32 and torch.equal(buffer, plain.get_buffer(name)), name
            assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    finally:
        dist.destroy_process_group()
