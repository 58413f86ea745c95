"""bench/memory.py, the memory planner: its parameter counts, a full-parameter and a LoRA configuration worked
by hand, its verdicts, its CLI, and its suggestions. Arithmetic only: a few seconds, no model is built (the
tiny model's LoRA layers are counted on the meta device)."""

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import memory  # noqa: E402

GIB = 2**30

# The issue's one-GPU example (README's one-GPU command): 3B, one 80 GB card, KL on (EMO-R3's default 0.01)
ONE_GPU_FLAGS = ["--rollout-batch-size", "64", "--mini-batch-size", "32", "--gpu-memory-utilization", "0.3"]
# The README's one-GPU LoRA commands: rank 64 on the default targets (q, k, v, o, gate, up, down), adapter sync
LORA_FLAGS = ["--lora-rank", "64", "--rollout-batch-size", "64", "--mini-batch-size", "32"]
LORA_COMMANDS = {"7B on 80 GB": ["--model", "7B", "--gpus", "1", "--gpu-gb", "80", *LORA_FLAGS,
                                 "--gpu-memory-utilization", "0.6"],
                 "3B on 48 GB": ["--model", "3B", "--gpus", "1", "--gpu-gb", "48", *LORA_FLAGS,
                                 "--gpu-memory-utilization", "0.6"],
                 "3B on 24 GB": ["--model", "3B", "--gpus", "1", "--gpu-gb", "24", *LORA_FLAGS,
                                 "--gpu-memory-utilization", "0.5"]}


def planner(*args):
    """bench/memory.py's plan() for `args` as its command line would take them."""
    flags = list(args)
    model = flags.pop(flags.index("--model") + 1)
    flags.remove("--model")
    setting = {}
    for name, kind in (("--gpus", int), ("--gpu-gb", float), ("--nodes", int), ("--host-gb", float)):
        if name in flags:
            setting[name[2:].replace("-", "_")] = kind(flags.pop(flags.index(name) + 1))
            flags.remove(name)
    return memory.plan(memory.ARCHS[model], memory.trainer_config(flags), **setting)


def test_parameter_counts_match_hand_sums():
    """The planner would size every term from a wrong parameter count (a layer's bias or the merger forgotten,
    the untied 7B head counted once)."""
    # 3B: 36 text layers of q (2048 x 2048 + bias), k and v (2048 x 256 + bias each), o (2048 x 2048), MLP
    # 3 x 2048 x 11008, 2 norms; the embedding (tied with the head) and the final norm
    text_3b = 36 * ((2048 * 2048 + 2048) + 2 * (2048 * 256 + 256) + 2048 * 2048 + 3 * 2048 * 11008 + 2 * 2048) \
        + 151936 * 2048 + 2048
    # 32 vision blocks: qkv 1280 x 3840 + bias, proj 1280 x 1280 + bias, MLP gate/up/down with biases,
    # 2 norms; the patch embedding Conv3d 3 x 2 x 14 x 14 -> 1280; merger: norm + 5120 x 5120 + 5120 x out
    block = (1280 * 3840 + 3840) + (1280 * 1280 + 1280) + 2 * (1280 * 3420 + 3420) + (3420 * 1280 + 1280) + 2 * 1280
    vision_3b = 32 * block + 3 * 2 * 14 * 14 * 1280 + (1280 + 5120 * 5120 + 5120 + 5120 * 2048 + 2048)
    # 7B: 28 layers at hidden 3584, 4 kv heads x 128, MLP 18944; an embedding AND an LM head
    text_7b = 28 * ((3584 * 3584 + 3584) + 2 * (3584 * 512 + 512) + 3584 * 3584 + 3 * 3584 * 18944 + 2 * 3584) \
        + 2 * 151936 * 3584 + 3584
    vision_7b = 32 * block + 3 * 2 * 14 * 14 * 1280 + (1280 + 5120 * 5120 + 5120 + 5120 * 3584 + 3584)
    for name, hand in (("3B", text_3b + vision_3b), ("7B", text_7b + vision_7b)):
        counted = memory.param_counts(memory.ARCHS[name])["total"]
        assert abs(counted - hand) <= 0.005 * hand, (name, counted, hand)
    # the published sizes, 3.75B and 8.29B; exactly the transformers 5.19 modules' parameters (built on the
    # meta device from these dimensions), the tied head counted once
    assert memory.param_counts(memory.ARCHS["3B"])["total"] == 3_754_622_976
    assert memory.param_counts(memory.ARCHS["7B"])["total"] == 8_291_249_152
    assert memory.param_counts(memory.ARCHS["3B"])["vision"] == vision_3b == 668_684_288


def test_parameter_count_of_a_model_folder_is_its_weights(tiny_model_dir):
    """--model PATH would read a folder's config.json into other dimensions than its weights have (nested
    text_config, in_channels, tied head)."""
    counted = memory.param_counts(memory.arch_from_folder(tiny_model_dir))["total"]
    with open(Path(tiny_model_dir) / "model.safetensors", "rb") as f:  # the safetensors header: shapes, no torch
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    header.pop("__metadata__", None)
    assert counted == sum(math.prod(t["shape"]) for t in header.values())


def test_one_gpu_3b_worked_by_hand():
    """A term of the planner would have drifted from the arithmetic written here (each with its reason), so
    its figures and verdicts would no longer be the ones the README quotes."""
    r = planner("--model", "3B", "--gpus", "1", "--gpu-gb", "80", *ONE_GPU_FLAGS)
    P = 3_754_622_976  # noqa: N806  parameters, all trainable (the vision tower too)
    root = 151936 * 2048 + 2048 + 3 * 2 * 14 * 14 * 1280 + (1280 + 5120 * 5120 + 5120 + 5120 * 2048 + 2048)
    layer = (2048 * 2048 + 2048) + 2 * (2048 * 256 + 256) + 2048 * 2048 + 3 * 2048 * 11008 + 2 * 2048
    usable = 80 * 0.995  # GiB
    # micro-batches: 4 sequences of at most 2048 + 2048 tokens, budget 16384 -> 16384 tokens; groups of 8
    # contiguous responses -> at most 2 prompts in 4 sequences; every prompt token an image token: 2 x 2048 x 4
    # patches; 4 responses (the budget's (16384 - 2048) // 2048 = 7 caps none of the 4)
    tokens, patches, responses = 16384, 2 * 2048 * 4, 4
    # log-prob micro-batches: 16 sequences, the same budget -> 16384 tokens, 3 prompts, 7 responses
    lp_tokens, lp_patches, lp_responses = 16384, 3 * 2048 * 4, 7
    hand = {
        "cuda_context": 0.5,  # estimate, per process
        "nccl_buffers": 0.0,  # one rank: no communicator buffers
        "policy": 4 * P / GIB,  # fp32 master weights, all on the one rank
        "adamw": 8 * P / GIB,  # exp_avg + exp_avg_sq, fp32
        "reference": 2 * P / GIB,  # KL on: bf16 reference (change 2)
        "logprob_buffers": 4 * 64 * 8 * 2048 * 2 / GIB,  # 512 sequences x 2048 fp32 log-probs, old + ref
        "grads": 4 * P / GIB,  # fp32 sharded gradients, update only (change 1)
        "vllm_awake": 0.3 * usable,  # gpu_memory_utilization x the card's total
        "vllm_asleep": 0.75,  # estimate: the CUDA-graph pool sleep keeps
        "vllm_weights": 2 * P / GIB,  # bf16 engine weights, TP 1
        # max_model_len 2048 + 2048 tokens x K, V x 36 layers x 2 kv heads x 128 x bf16
        "vllm_kv_one_sequence": 4096 * 2 * 36 * 2 * 128 * 2 / GIB,
        "vllm_activation": 3.0,  # estimate of vLLM's profiled activation peak
        "act_inputs": (tokens * 80 + patches * 1176 * 4 + responses * 2048 * 4096) / GIB,  # ids etc., fp32 pixels, mask
        "act_text_checkpoints": 36 * tokens * 2048 * 2 / GIB,  # one bf16 input per decoder layer
        "act_vision_checkpoints": 32 * patches * 1280 * 2 / GIB,  # one bf16 input per vision block
        "fsdp_root_unsharded": root * 2 / GIB,  # the root unit in bf16 from forward to backward
        "fsdp_root_grads": root * 2 / GIB,  # its bf16 gradients
        # LM head: fp32 weight copy + its gradient, 4 fp32 (1024 x V) tensors, the gathered bf16 states
        "act_head_backward": (151936 * 2048 * 4 * 2 + 4 * 1024 * 151936 * 4 + 4 * 2048 * 2048 * 2) / GIB,
        # one decoder layer recomputed: (14 H + 4 kv hd + 4 I) saved + (2 I + 2 H) gradients per token, bf16;
        # 4 responses' gathered q (2048) and expanded k, v (4096 each) x 16 heads x 128, and their gradients
        "act_layer_recompute": (tokens * 2 * ((14 * 2048 + 4 * 2 * 128 + 4 * 11008) + 2 * 11008 + 2 * 2048)
                                + 4 * (2 * 4096 + 2048) * 16 * 128 * 2 * 2) / GIB,
        "act_vision_block_recompute": patches * 2 * ((18 * 1280 + 4 * 3420) + 2 * 3420 + 2 * 1280) / GIB,
        "fsdp_units": layer * (2 * 2 + 2 + 4) / GIB,  # 2 bf16 units + a unit's bf16 gradient + its fp32 copy
        "adamw_step_temp": 2 * 4 * 151936 * 2048 / GIB,  # sqrt and the division of the embedding's exp_avg_sq
        # no grad: inputs + root + 2 units (bf16) + the largest transient of: a layer's (3 I + 4 H per token,
        # 7 responses' gathered q, k, v), a vision block's, the LM head's (fp32 weight + 2 fp32 chunks): the head
        "logprob_forward": (lp_tokens * 80 + lp_patches * 1176 * 4 + (root + 2 * layer) * 2
                            + max(lp_tokens * 2 * (3 * 11008 + 4 * 2048)
                                  + lp_responses * (2 * 4096 + 2048) * 16 * 128 * 2,
                                  lp_patches * 2 * (3 * 3420 + 4 * 1280),
                                  151936 * 2048 * 4 + 2 * 1024 * 151936 * 4)) / GIB,
    }
    assert set(r["terms"]) == set(hand)
    for key, figure in hand.items():
        assert r["terms"][key] == pytest.approx(figure, rel=1e-9, abs=1e-9), key
    state = hand["policy"] + hand["adamw"] + hand["reference"] + hand["logprob_buffers"]
    working = (hand["act_inputs"] + hand["act_text_checkpoints"] + hand["act_vision_checkpoints"]
               + hand["fsdp_root_unsharded"] + hand["fsdp_root_grads"]
               + max(hand["act_head_backward"], hand["act_layer_recompute"] + hand["fsdp_units"]))
    rollout = 0.5 + state + hand["vllm_awake"]  # the training state + vLLM's whole share
    update = 0.5 + state + hand["grads"] + 0.75 + working  # the backward is the update's largest phase
    assert r["rollout_peak_gib"] == pytest.approx(rollout, rel=1e-9)
    assert r["update_peak_gib"] == pytest.approx(update, rel=1e-9)
    assert r["headroom_gib"] == pytest.approx(usable - max(rollout, update), rel=1e-9)
    assert r["vllm_min_gib"] == pytest.approx(2 * P / GIB + 3.0 + 0.75 + hand["vllm_kv_one_sequence"], rel=1e-9)
    # host: rank 0 reads the fp32 model once (change 4); asleep, the bf16 weights pinned (level 1, change 5)
    assert r["host"]["startup_first_node"] == pytest.approx(3.0 + 4 * P / GIB, rel=1e-9)
    assert r["host"]["asleep_per_node"] == pytest.approx(3.0 + 2 * P / GIB, rel=1e-9)
    # in round figures, as the README quotes them
    assert (round(rollout, 1), round(update, 1), round(usable - max(rollout, update), 1)) == (73.3, 73.8, 5.8)


def test_lora_3b_on_24_gb_worked_by_hand():
    """LoRA's terms would have drifted from the arithmetic written here (the adapter miscounted, the frozen base
    kept in fp32, a reference model counted that LoRA does not load, AdamW and gradients on the frozen base), so
    the README's LoRA commands would be sized wrong."""
    r = planner(*LORA_COMMANDS["3B on 24 GB"])
    P = 3_754_622_976  # noqa: N806  the base's parameters, frozen
    # per decoder layer, rank x (in + out) of q (2048 -> 2048), k and v (2048 -> 256), o (2048 -> 2048), gate and
    # up (2048 -> 11008), down (11008 -> 2048); 36 layers; no vision-tower layer without --lora-vision
    per_layer = 64 * ((2048 + 2048) + 2 * (2048 + 256) + (2048 + 2048) + 3 * (2048 + 11008))
    A = 36 * per_layer  # noqa: N806
    assert A == 119_734_272 == r["trainable_params"] == r["lora"]["adapter_params"]
    assert memory.adapter_counts(memory.ARCHS["3B"], 64, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj"])["total"] == A
    usable, tokens = 24 * 0.995, 16384
    layer = (2048 * 2048 + 2048) + 2 * (2048 * 256 + 256) + 2048 * 2048 + 3 * 2048 * 11008 + 2 * 2048
    hand = {
        "policy": (2 * P + 4 * A) / GIB,  # the frozen base in bf16 + the fp32 adapter
        "adamw": 8 * A / GIB,  # exp_avg + exp_avg_sq of the adapter only
        "reference": 0.0,  # none: the reference is the policy with its adapter off (KL is on)
        "grads": 4 * A / GIB,  # fp32 gradients of the adapter only
        # vLLM: the bf16 base + one rank-64 slot on all 7 linear layers of each decoder layer (= A here)
        "vllm_weights": 2 * (P + A) / GIB,
        "act_vision_checkpoints": 0.0, "act_vision_block_recompute": 0.0,  # the vision tower is frozen
        "fsdp_root_grads": 0.0,  # the root unit (embedding, merger) has nothing to train
        # the LM head's fp32 copy without a gradient (frozen), 4 fp32 (1024 x V) chunk tensors, gathered states
        "act_head_backward": (151936 * 2048 * 4 + 4 * 1024 * 151936 * 4 + 4 * 2048 * 2048 * 2) / GIB,
        # as without LoRA + per token A's 7 outputs of rank 64 and B's widest output (11008) with its scaled copy
        "act_layer_recompute": (tokens * 2 * ((14 * 2048 + 4 * 2 * 128 + 4 * 11008) + 2 * 11008 + 2 * 2048
                                              + 7 * 64 + 2 * 11008)
                                + 4 * (2 * 4096 + 2048) * 16 * 128 * 2 * 2) / GIB,
        "fsdp_units": (layer * 2 * 2 + per_layer * (2 + 4)) / GIB,  # 2 bf16 units + the adapter's bf16, fp32 grads
        "adamw_step_temp": 2 * 4 * 11008 * 64 / GIB,  # the largest trainable tensor: gate's or up's B, down's A
    }
    for key, figure in hand.items():
        assert r["terms"][key] == pytest.approx(figure, rel=1e-9, abs=1e-9), key
    # every other term as in full-parameter training at the same flags (activations, log-probs, vLLM's share)
    full = planner(*LORA_COMMANDS["3B on 24 GB"], "--lora-rank", "0")
    for key in set(r["terms"]) - set(hand):
        assert r["terms"][key] == pytest.approx(full["terms"][key], rel=1e-12), key
    state = hand["policy"] + hand["adamw"] + 4 * 64 * 8 * 2048 * 2 / GIB  # + the old and ref log-prob buffers
    assert r["persistent_gib"] == pytest.approx(state, rel=1e-9)
    assert r["rollout_peak_gib"] == pytest.approx(0.5 + state + 0.5 * usable, rel=1e-9)  # the rollout binds
    assert r["host"]["startup_first_node"] == pytest.approx(3.0 + 4 * (P + A) / GIB, rel=1e-9)  # fp32, + adapter
    # in round figures, as the README quotes them: rollout, update, headroom
    assert (round(r["rollout_peak_gib"], 1), round(r["update_peak_gib"], 1), round(r["headroom_gib"], 1)) \
        == (20.8, 17.4, 3.1)


def test_lora_adapter_count_is_the_tiny_models(tiny_model_dir):
    """The planner's table of linear layers would differ from the model's modules (a layer's in/out swapped or
    missing, a target matched where lora.apply_lora does not), so its adapter count would not be LoRA's."""
    import lora
    import model as modeling
    arch = memory.arch_from_folder(tiny_model_dir)
    for targets, vision in ((lora.DEFAULT_TARGETS, False), (("q_proj", "mlp.down_proj"), False),
                            ((*lora.DEFAULT_TARGETS, "qkv", "attn.proj", "mlp.0", "mlp.2"), True)):
        tiny = modeling.meta_model(tiny_model_dir, {"text_config": "sdpa", "vision_config": "sdpa"}, False)
        lora.apply_lora(tiny, 8, 16, targets, vision=vision)
        counted = sum(p.numel() for name, p in tiny.named_parameters() if lora.is_adapter(name))
        assert memory.adapter_counts(arch, 8, targets, vision)["total"] == counted, targets
    with pytest.raises(SystemExit, match="--lora-vision"):  # vision-tower targets: refused as apply_lora does
        planner("--model", "3B", "--gpus", "1", "--gpu-gb", "80", "--lora-rank", "64", "--lora-targets", "qkv")


def test_lora_needs_less_than_full_parameter_training():
    """LoRA would be planned at least as large as full-parameter training, so the planner would send LoRA users
    to more GPUs than they need."""
    full = planner("--model", "3B", "--gpus", "1", "--gpu-gb", "80", *ONE_GPU_FLAGS)
    lora_run = planner("--model", "3B", "--gpus", "1", "--gpu-gb", "80", *ONE_GPU_FLAGS, "--lora-rank", "64")
    assert lora_run["persistent_gib"] < full["persistent_gib"] / 5  # ~2 bytes per parameter, not 14
    assert lora_run["update_peak_gib"] < full["update_peak_gib"] and lora_run["peak_gib"] < full["peak_gib"]
    assert lora_run["headroom_gib"] > full["headroom_gib"] + 40
    # 7B on one card: full-parameter training does not fit (its state alone is 108 GiB); LoRA does
    seven = planner("--model", "7B", "--gpus", "1", "--gpu-gb", "80", *LORA_FLAGS)
    assert seven["verdict"] == "FITS" and seven["peak_gib"] < 80 * 0.995 - 10


def test_verdicts_of_the_documented_commands():
    """The README's commands would be documented as fitting (or not) against the planner's own arithmetic."""
    assert planner("--model", "3B", "--gpus", "1", "--gpu-gb", "80", *ONE_GPU_FLAGS)["verdict"] == "FITS"
    assert planner("--model", "3B", "--gpus", "8", "--gpu-gb", "80")["verdict"] == "FITS"
    assert planner("--model", "7B", "--gpus", "8", "--gpu-gb", "80")["verdict"] == "FITS"
    # vLLM's default share on one card cannot sit beside 3B's training state (49 GiB + 0.6 x 79.6)
    default_util = planner("--model", "3B", "--gpus", "1", "--gpu-gb", "80", *ONE_GPU_FLAGS[:4])
    assert default_util["verdict"] == "DOES NOT FIT" and default_util["rollout_peak_gib"] > 79.6
    # 7B's training state alone (14 bytes per parameter, 108 GiB) exceeds one card
    assert planner("--model", "7B", "--gpus", "1", "--gpu-gb", "80", *ONE_GPU_FLAGS)["verdict"] == "DOES NOT FIT"
    # vLLM below its weights + one sequence: it would refuse to start, whatever the trainer leaves free
    small_share = planner("--model", "7B", "--gpus", "8", "--gpu-gb", "40", "--gpu-memory-utilization", "0.3")
    assert small_share["verdict"] == "DOES NOT FIT" and "vLLM refuses to start" in small_share["problems"][0]
    # the one-GPU LoRA commands, each with a few GiB to spare
    for name, argv in LORA_COMMANDS.items():
        lora_plan = planner(*argv)
        assert lora_plan["verdict"] == "FITS" and lora_plan["headroom_gib"] > 3, name
    # on 24 GB vLLM's share has a window: the default 0.6 leaves too little for the trainer, 0.4 too little for vLLM
    for util in ("0.6", "0.4"):
        assert planner(*LORA_COMMANDS["3B on 24 GB"], "--gpu-memory-utilization", util)["verdict"] == "DOES NOT FIT"


def test_cli_json_parses_with_the_trainers_flags():
    """`python bench/memory.py ... --json` would fail to run, take flags other than train_grpo's, or give
    no verdict."""
    out = subprocess.run([sys.executable, "bench/memory.py", "--model", "3B", "--gpus", "1", "--gpu-gb", "80",
                          *ONE_GPU_FLAGS, "--json"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["verdict"] == "FITS" and result["suggestions"] == []
    assert result["config"]["gpu_memory_utilization"] == 0.3 and result["config"]["kl_coef"] == 0.01  # the trainer's
    assert result["update_peak_gib"] == pytest.approx(planner("--model", "3B", "--gpus", "1", "--gpu-gb", "80",
                                                              *ONE_GPU_FLAGS)["update_peak_gib"])
    bad = subprocess.run([sys.executable, "bench/memory.py", "--model", "3B", "--gpus", "1", "--gpu-gb", "80",
                          "--rollout-batch-size", "10", "--mini-batch-size", "4"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and "--rollout-batch-size must be a multiple of --mini-batch-size" in bad.stderr


def suggestions(argv, capsys):
    """Run the planner's main on argv; the flags of its "fits with:" line, then of its "or with:" lines."""
    memory.main(argv)
    lines = [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines()
             if line.startswith(("fits with: ", "  or with: "))]
    return [line.split("  (")[0].split() for line in lines]


def test_a_suggestion_applied_fits(capsys):
    """The planner would print a fix for a command that does not fit which, applied, still does not fit."""
    cases = [
        ["--model", "3B", "--gpus", "1", "--gpu-gb", "80", *ONE_GPU_FLAGS[:4]],  # vLLM's default share: too much
        ["--model", "7B", "--gpus", "1", "--gpu-gb", "80", *ONE_GPU_FLAGS],  # the training state alone: too much
        ["--model", "7B", "--gpus", "8", "--gpu-gb", "40", "--gpu-memory-utilization", "0.3"],  # vLLM cannot start
        ["--model", "7B", "--gpus", "8", "--gpu-gb", "80", "--host-gb", "128"],  # level-1 pinned copies: host RAM
    ]
    for argv in cases:
        fixes = suggestions(argv, capsys)
        assert fixes, argv
        for fix in fixes:
            assert memory.main([*argv, *fix, "--json"])["verdict"] == "FITS", (argv, fix)
            capsys.readouterr()
    assert suggestions(cases[0], capsys)[0] == ["--gpu-memory-utilization", "0.35"]  # the cheapest: the largest share
    assert ["--sleep-level", "2"] in suggestions(cases[3], capsys)  # (TP 2 halves each rank's copy: cheaper)
    # LoRA's adapter sync keeps the engine's base across sleeps: level 2 (which train_grpo refuses with it) is
    # never suggested, and what is suggested passes the trainer's start-up checks (main runs them)
    lora_host = [*cases[3], "--lora-rank", "64"]
    fixes = suggestions(lora_host, capsys)
    assert fixes and ["--sleep-level", "2"] not in fixes
    for fix in fixes:
        assert memory.main([*lora_host, *fix, "--json"])["verdict"] == "FITS", fix
        capsys.readouterr()


def test_gpu_step_sets_the_planners_figure_beside_its_measured_peak(tiny_model_dir):
    """bench/gpu_step.py would show the lent GPU's measured peak without the planner's figure for the same run,
    or a figure for other settings than the run's (its config.json) or without the HF engine's own copy."""
    import dataclasses

    import gpu_step
    import train_grpo
    cfg = dataclasses.asdict(train_grpo.parse_config(["--demo", "--kl-coef", "0", "--max-response-length", "48"]))
    cfg["some_later_field"] = 1  # a config.json from a newer trainer: fields the Config lacks are left out
    got = gpu_step.planner_estimate(tiny_model_dir, cfg, {"name": "NVIDIA H100", "memory_gib": 79.6}, logits_gib=0.25)
    planned = memory.plan(memory.arch_from_folder(tiny_model_dir), train_grpo.parse_config(
        ["--demo", "--kl-coef", "0", "--max-response-length", "48"]), gpus=1, gpu_gb=80)
    copy = 4 * planned["params"] / GIB  # --engine hf: HFEngine's fp32 copy, not in the planner
    assert got["hf_engine_copy_gib"] == pytest.approx(copy)
    assert got["update_gib"] == pytest.approx(planned["update_peak_torch_gib"] + copy)
    assert got["hf_rollout_gib"] == pytest.approx(planned["persistent_gib"] + copy + 0.25)
    assert got["estimate_gib"] == max(got["update_gib"], got["hf_rollout_gib"])
    assert planned["terms"]["reference"] == 0 and got["planner_terms_gib"] == planned["terms"]  # the run's KL off


def test_sleep_level_is_the_trainers_flag():
    """--sleep-level (train_grpo's flag) would be refused or ignored by the planner, or level 2 would still count
    level 1's pinned host copies."""
    argv = ["--model", "7B", "--gpus", "8", "--gpu-gb", "80", "--json"]
    level1, level2 = memory.main(argv), memory.main([*argv, "--sleep-level", "2"])
    assert level1["host"]["pinned_per_gpu"] == pytest.approx(2 * 8_291_249_152 / GIB / 1)
    assert level2["config"]["sleep_level"] == level2["sleep_level"] == 2 and level2["host"]["pinned_per_gpu"] == 0
