"""GRPO math of train_grpo.py against hand-worked values (METHOD.md, "GRPO").

Every expected number below is worked out from the spec in the comment beside it. The last tests run
train_grpo.update_policy itself at world size 2 (tests/dist_update_check.py, one torchrun launch) and
check that the gradients it hands the optimizer are those of one process holding the whole mini-batch,
with the loss written from METHOD.md, and that non-finite updates are skipped and stop every rank alike.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dist_update_check as upd  # the update scenarios (importing it runs nothing)
import train_grpo
from train_grpo import aggregate, grpo_advantages, kl_penalty, policy_loss

REPO = Path(__file__).resolve().parents[1]


# --- advantages ---------------------------------------------------------------------------------

def test_advantages_one_correct_answer_in_a_group_of_four():
    """Broken: the group mean, the unbiased std or the +1e-6 of A = (R - mean) / (std + 1e-6)."""
    adv = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), group_size=4)
    # mean 0.25; deviations 0.75, -0.25 x3; unbiased var (0.5625 + 3 * 0.0625) / 3 = 0.25, std 0.5
    # 0.75 / 0.500001 = 1.499997000006, -0.25 / 0.500001 = -0.499999000002
    expected = torch.tensor([1.499997000006, -0.499999000002, -0.499999000002, -0.499999000002])
    assert torch.allclose(adv, expected, rtol=0, atol=3e-7)
    # the eps is really there: without it the first value would be 1.5 (3e-6 away)
    assert abs(adv[0].item() - 1.5) > 2e-6


def test_advantages_groups_are_contiguous_blocks():
    """Broken: groups taken with a stride (view(group_size, -1)) instead of contiguous blocks of n."""
    adv = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 0.0, 0.0]), group_size=4)
    # group 1 as above; group 2: mean 1, deviations +-1, var 4 / 3, std 2 / sqrt(3) = 1.1547005383792517
    # 1 / (1.1547005383792517 + 1e-6) = 0.8660246537850881
    a, b = 1.499997000006, 0.499999000002
    c = 0.8660246537850881
    expected = torch.tensor([a, -b, -b, -b, c, c, -c, -c])
    assert adv.shape == (8,)
    assert torch.allclose(adv, expected, rtol=0, atol=3e-7)


def test_advantages_zero_variance_group_is_exactly_zero():
    """Broken: a group where every response has the same reward gives NaN/inf instead of 0 (no signal)."""
    adv = grpo_advantages(torch.tensor([0.5, 0.5, 0.5, 0.5, 1.0, 0.0, 1.0, 0.0]), group_size=4)
    # group 1: deviations 0, std 0 -> 0 / (0 + 1e-6) = 0; group 2: mean 0.5, var 4 * 0.25 / 3 = 1/3,
    # std 0.5773502691896258, 0.5 / (0.5773502691896258 + 1e-6) = 0.8660239037879
    assert adv[:4].tolist() == [0.0, 0.0, 0.0, 0.0]
    c = 0.8660239037879
    assert torch.allclose(adv[4:], torch.tensor([c, -c, c, -c]), rtol=0, atol=3e-7)


def test_advantages_without_std_scaling_are_centred_rewards():
    """Broken: --no-adv-std (Dr. GRPO) still divides by the group std."""
    adv = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 1.0, 1.0, 1.0]), group_size=4, scale_by_std=False)
    # R - mean: group 1 mean 0.25, group 2 mean 1.5
    assert adv.tolist() == [0.75, -0.25, -0.25, -0.25, 1.5, -0.5, -0.5, -0.5]


def test_advantages_are_float32_and_1d_for_integer_and_double_rewards():
    """Broken: advantages keep the rewards' dtype or shape (the trainer writes them with .tolist() per sample)."""
    for rewards in (torch.tensor([1, 0, 0, 0, 1, 1, 0, 0]), torch.tensor([1, 0, 0, 0, 1, 1, 0, 0], dtype=torch.float64)):
        adv = grpo_advantages(rewards, group_size=4)
        assert adv.dtype == torch.float32
        assert adv.shape == (8,)
        assert torch.isfinite(adv).all()


def test_group_size_one_is_rejected_at_startup():
    """Broken: --group-size 1 is accepted, and the unbiased group std (n - 1 = 0) makes every advantage NaN."""
    with pytest.raises(SystemExit, match="--group-size must be > 1"):
        train_grpo.parse_config(["--demo", "--group-size", "1"])
    assert train_grpo.parse_config(["--demo", "--group-size", "2"]).group_size == 2  # the check is about n only


# --- policy loss --------------------------------------------------------------------------------

def one_token(log_ratio, advantage, **kwargs):
    """policy_loss on a single token with logp - old_logp = log_ratio; returns (loss, metrics, d loss / d logp)."""
    logp = torch.tensor([[log_ratio]], requires_grad=True)
    loss, metrics = policy_loss(logp, torch.zeros(1, 1), torch.tensor([advantage]), torch.ones(1, 1), **kwargs)
    loss.backward()
    return loss.item(), metrics, logp.grad.item()


def test_policy_loss_positive_advantage_inside_the_clip_range():
    """Broken: the unclipped PPO term -A * ratio or its gradient -A * ratio (d exp(logp - old) / d logp = ratio)."""
    loss, metrics, grad = one_token(math.log(1.1), 2.0)
    # ratio 1.1 in [0.8, 1.3]: loss = -2 * 1.1 = -2.2; gradient -A * ratio = -2.2
    assert loss == pytest.approx(-2.2, abs=1e-6)
    assert grad == pytest.approx(-2.2, abs=1e-6)
    assert metrics["clip_frac_high"] == 0.0 and metrics["clip_frac_low"] == 0.0
    # ppo_kl = old - logp = -ln 1.1 = -0.09531017980432493
    assert metrics["ppo_kl"] == pytest.approx(-0.09531017980432493, abs=1e-7)


def test_policy_loss_positive_advantage_ratio_above_the_clip_is_clipped_at_1_3():
    """Broken: clip_high (0.3) or the PPO max(), or the dual clip wrongly applied to A > 0."""
    loss, metrics, grad = one_token(math.log(2.0), 2.0)
    # max(-2 * 2, -2 * 1.3) = max(-4, -2.6) = -2.6; the clipped branch is constant in logp -> gradient 0
    # (a dual clip applied to A > 0 would give min(-2.6, -3 * 2) = -6)
    assert loss == pytest.approx(-2.6, abs=1e-6)
    assert grad == 0.0
    assert metrics["clip_frac_high"] == 1.0 and metrics["clip_frac_low"] == 0.0


def test_policy_loss_positive_advantage_ratio_below_the_clip_stays_unclipped():
    """Broken: the PPO pessimism (max of the two losses) picks the clipped term when the ratio is small and A > 0."""
    loss, metrics, grad = one_token(math.log(0.5), 2.0)
    # max(-2 * 0.5, -2 * 0.8) = max(-1, -1.6) = -1 (unclipped); gradient -A * ratio = -1
    assert loss == pytest.approx(-1.0, abs=1e-6)
    assert grad == pytest.approx(-1.0, abs=1e-6)
    assert metrics["clip_frac_high"] == 0.0


def test_policy_loss_negative_advantage_ratio_below_the_clip_is_clipped_at_0_8():
    """Broken: clip_low (0.2) for negative advantages."""
    loss, metrics, grad = one_token(math.log(0.5), -2.0)
    # max(2 * 0.5, 2 * 0.8) = max(1, 1.6) = 1.6; dual min(1.6, 3 * 2 = 6) = 1.6; gradient 0
    assert loss == pytest.approx(1.6, abs=1e-6)
    assert grad == 0.0
    # EasyR1's pg_clipfrac_higher counts every token where the PPO clip wins (pg_loss < pg_loss2), either side
    assert metrics["clip_frac_high"] == 1.0 and metrics["clip_frac_low"] == 0.0


def test_policy_loss_negative_advantage_moderate_ratio_is_unclipped():
    """Broken: the dual clip bites before -A * ratio exceeds -3 * A, or the A < 0 gradient is wrong."""
    loss, metrics, grad = one_token(math.log(2.0), -2.0)
    # max(2 * 2, 2 * 1.3) = 4; dual min(4, 6) = 4 (unclipped); gradient -A * ratio = 2 * 2 = 4
    assert loss == pytest.approx(4.0, abs=1e-6)
    assert grad == pytest.approx(4.0, abs=1e-5)
    assert metrics["clip_frac_high"] == 0.0 and metrics["clip_frac_low"] == 0.0


def test_policy_loss_negative_advantage_large_ratio_hits_the_dual_clip():
    """Broken: the dual clip (constant 3.0) that bounds the loss of very large ratios when A < 0."""
    loss, metrics, grad = one_token(math.log(5.0), -2.0)
    # max(2 * 5, 2 * 1.3) = 10; dual min(10, -3 * -2 = 6) = 6, a constant -> gradient 0
    assert loss == pytest.approx(6.0, abs=1e-6)
    assert grad == 0.0
    assert metrics["clip_frac_low"] == 1.0 and metrics["clip_frac_high"] == 0.0


def test_policy_loss_dapo_clip_high():
    """Broken: the clip_high argument (DAPO's 0.28) is ignored."""
    loss, _, grad = one_token(math.log(2.0), 2.0, clip_high=0.28)
    # max(-2 * 2, -2 * 1.28) = -2.56
    assert loss == pytest.approx(-2.56, abs=1e-6)
    assert grad == 0.0
    loss, _, _ = one_token(math.log(2.0), -2.0, clip_dual=1.5)
    # the clip_dual argument: max(4, 2.6) = 4, min(4, 1.5 * 2 = 3) = 3
    assert loss == pytest.approx(3.0, abs=1e-6)


def test_policy_loss_log_ratio_is_clamped_before_exp():
    """Broken: the +-20 clamp of logp - old_logp, so exp overflows to inf and the gradient becomes NaN."""
    # logp - old = 100: exp(100) is inf in fp32; clamped, the ratio is exp(20) = 4.85e8
    loss, _, grad = one_token(100.0, 2.0)
    assert loss == pytest.approx(-2.6, abs=1e-6)  # max(-2 * 4.85e8, -2 * 1.3)
    assert grad == 0.0  # without the clamp: 0 * inf = NaN
    loss, _, grad = one_token(100.0, -2.0)
    assert loss == pytest.approx(6.0, abs=1e-6)  # max(2 * 4.85e8, 2.6) -> dual min(., 6) = 6
    assert grad == 0.0
    loss, _, grad = one_token(-100.0, 2.0)
    # ratio exp(-20) = 2.061e-9: max(-2 * 2.061e-9, -1.6) = -4.1223e-9; clamped log-ratio -> gradient 0
    assert loss == pytest.approx(-2 * math.exp(-20), rel=1e-5)
    assert grad == 0.0


def test_policy_loss_masks_padding_and_aggregates():
    """Broken: padded tokens enter the loss, the metrics' token means, or the seq/token aggregation."""
    log_ratio = torch.tensor([[math.log(1.1), math.log(2.0)], [math.log(5.0), math.log(2.0)]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # the second sequence's last token is padding
    adv = torch.tensor([2.0, -2.0])
    loss, metrics = policy_loss(log_ratio, torch.zeros(2, 2), adv, mask)
    loss.backward()
    # per token (cases above): -2.2 (unclipped), -2.6 (clip high), 6 (dual clip); padding excluded
    # token mean (-2.2 - 2.6 + 6) / 3 = 0.4
    assert loss.item() == pytest.approx(0.4, abs=1e-6)
    # only the unclipped token has a gradient: -A * ratio / 3 = -2.2 / 3 = -0.7333333
    assert torch.allclose(log_ratio.grad, torch.tensor([[-2.2 / 3, 0.0], [0.0, 0.0]]), rtol=0, atol=1e-6)
    assert metrics["clip_frac_high"] == pytest.approx(1 / 3)
    assert metrics["clip_frac_low"] == pytest.approx(1 / 3)
    # ppo_kl = mean(old - logp) over 3 tokens = -(ln 1.1 + ln 2 + ln 5) / 3 = -ln 11 / 3 = -0.7993061
    assert metrics["ppo_kl"] == pytest.approx(-math.log(11.0) / 3, abs=1e-6)
    seq_loss, _ = policy_loss(log_ratio.detach(), torch.zeros(2, 2), adv, mask, agg="seq")
    # sequence means: (-2.2 - 2.6) / 2 = -2.4 and 6 / 1 = 6 -> (-2.4 + 6) / 2 = 1.8
    assert seq_loss.item() == pytest.approx(1.8, abs=1e-6)


# --- aggregation --------------------------------------------------------------------------------

VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])  # ragged: 3 tokens and 1 token


def test_aggregate_token_mean():
    """Broken: --loss-agg token (EMO-R3's default) is not the masked token mean."""
    # (1 + 2 + 3 + 4) / 4 masked tokens = 2.5
    assert aggregate(VALUES, MASK, "token").item() == 2.5


def test_aggregate_sequence_mean():
    """Broken: --loss-agg seq is not the mean of per-sequence masked means."""
    # sequence means (1 + 2 + 3) / 3 = 2 and 4 / 1 = 4 -> (2 + 4) / 2 = 3
    assert aggregate(VALUES, MASK, "seq").item() == 3.0


def test_aggregate_drgrpo_constant_normaliser():
    """Broken: --loss-agg drgrpo does not divide the masked sum by sequences * T."""
    # 10 / (2 * 3) = 1.6666666
    assert aggregate(VALUES, MASK, "drgrpo").item() == pytest.approx(10 / 6, abs=1e-6)


def test_aggregate_denom_replaces_the_local_count():
    """Broken: `denom` (the mini-batch's global count) is ignored, so micro-batches are means of means."""
    assert aggregate(VALUES, MASK, "token", denom=8.0).item() == 1.25  # 10 / 8
    assert aggregate(VALUES, MASK, "seq", denom=8.0).item() == 0.75  # (2 + 4) / 8
    assert aggregate(VALUES, MASK, "drgrpo", denom=8.0).item() == 1.25  # 10 / 8


def test_aggregate_unknown_mode_raises():
    """Broken: a misspelt aggregation silently picks some default."""
    with pytest.raises(ValueError, match="tokens"):
        aggregate(VALUES, MASK, "tokens")


# --- KL penalty ---------------------------------------------------------------------------------

def test_kl_penalty_kinds():
    """Broken: one of the KL estimators k1 (kl), abs, k2 (mse), k3 (low_var_kl)."""
    logp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-2.0, -1.0]])
    # logp - ref = 1 and -1
    assert kl_penalty(logp, ref, "kl").tolist() == [[1.0, -1.0]]
    assert kl_penalty(logp, ref, "abs").tolist() == [[1.0, 1.0]]
    assert kl_penalty(logp, ref, "mse").tolist() == [[0.5, 0.5]]  # 0.5 * (+-1)^2
    # k3: d = ref - logp = -1 -> exp(-1) + 1 - 1 = 0.36787944117144233; d = 1 -> e - 1 - 1 = 0.7182818284590451
    k3 = kl_penalty(logp, ref, "low_var_kl")
    assert torch.allclose(k3, torch.tensor([[0.36787944117144233, 0.7182818284590451]]), rtol=0, atol=1e-7)
    assert torch.allclose(kl_penalty(logp, ref), k3)  # low_var_kl is the default (EMO-R3)
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k3")


def test_kl_penalty_low_var_kl_gradient():
    """Broken: the KL loss term pushes the policy the wrong way (d k3 / d logp = 1 - exp(ref - logp))."""
    logp = torch.tensor([[-1.0]], requires_grad=True)
    kl_penalty(logp, torch.tensor([[-2.0]])).sum().backward()
    # d/dlogp [exp(ref - logp) - (ref - logp) - 1] = -exp(d) + 1, d = -1: 1 - 0.36787944 = 0.6321205588285577
    assert logp.grad.item() == pytest.approx(0.6321205588285577, abs=1e-7)


def test_kl_penalty_low_var_kl_clamps():
    """Broken: the k3 clamps (result at 10; ref - logp at +-20 so exp never overflows into NaN gradients)."""
    logp = torch.tensor([[0.0, 0.0, 0.0]], requires_grad=True)
    ref = torch.tensor([[15.0, -15.0, 100.0]])
    k3 = kl_penalty(logp, ref)
    # d = 15: exp(15) - 16 = 3269001.4 -> 10; d = -15: exp(-15) + 14 = 14.0000003 -> 10;
    # d = 100: clamped to 20, exp(20) - 21 = 4.85e8 -> 10
    assert k3.tolist() == [[10.0, 10.0, 10.0]]
    k3.sum().backward()
    # all three are clamped at 10: zero gradient; without the +-20 clamp d = 100 gives 0 * inf = NaN
    assert logp.grad.tolist() == [[0.0, 0.0, 0.0]]


def test_kl_penalty_is_fp32_for_any_input_dtype():
    """Broken: the KL estimate is computed in bf16 (EMO-R3 computes it in fp32)."""
    for dtype in (torch.bfloat16, torch.float64):
        out = kl_penalty(torch.tensor([[-1.0]], dtype=dtype), torch.tensor([[-2.0]], dtype=dtype))
        assert out.dtype == torch.float32
        assert out.item() == pytest.approx(0.36787944117144233, abs=1e-7)  # -1, -2 are exact in bf16


# --- the backward scale by hand --------------------------------------------------------------

def test_backward_scale_by_hand():
    """Broken: the factor a micro-batch's loss gets before backward. One rank, micro-batches with token
    losses [1, 2, 3] and [4, 5]: micro mean = (2 + 4.5) / 2 = 3.25; global token mean = 15 / 5 = 3."""
    from train_grpo import backward_scale
    values = [torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[4.0, 5.0]])]
    micro = sum(aggregate(v, torch.ones_like(v), "token") * backward_scale("micro", 2, 1) for v in values)
    token = sum(aggregate(v, torch.ones_like(v), "token", denom=5.0) * backward_scale("token", 2, 1) for v in values)
    assert micro.item() == 3.25 and token.item() == 3.0
    assert backward_scale("token", 2, 8) == 8.0 and backward_scale("micro", 4, 8) == 0.25


# --- the trainer's update at world size 2 (tests/dist_update_check.py: update_policy, FSDP2, torchrun) ---
# One launch runs train_grpo.update_policy in every scenario of dist_update_check.SCENARIOS on the tiny
# Qwen2.5-VL; the reference below is one process with the plain model (no FSDP, no packing, no
# micro-batches) holding all 24 sequences of both ranks, and the losses written from METHOD.md.

@pytest.fixture(scope="module")
def update_run(tiny_model_dir, demo_dir, tmp_path_factory):
    """tests/dist_update_check.py on 2 ranks, once for every test below: {"scenarios": {name: {"ranks":
    [outcome of rank 0, of rank 1], "grads": [{param: full gradient} per optimizer step]}}, "inputs", ...}."""
    out = tmp_path_factory.mktemp("update") / "results.pt"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port",
                           "29931", "tests/dist_update_check.py", str(tiny_model_dir), str(demo_dir / "train.jsonl"),
                           str(out)], cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def reference(update_run, tiny_model_dir):
    """The plain model on plainly padded [left pad | prompt | response | right pad] rows, one per sequence
    (rank 0's 12, then rank 1's 12), each with its own copy of its prompt and image, the model's own causal
    mask and positions, log-probs from the full logits / temperature: {"logp": (24, R) with its graph,
    "mask", "adv", "params": {name: parameter}}."""
    from transformers import AutoModelForImageTextToText
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    inputs, pad_id = update_run["inputs"], update_run["pad_id"]
    rows = [(r["encoded"][prompt], response) for r in inputs for prompt, response, _ in r["samples"]]
    prompt_len, resp_len = max(len(e["input_ids"]) for e, _ in rows), max(len(resp) for _, resp in rows)
    ids = torch.full((len(rows), prompt_len + resp_len), pad_id, dtype=torch.long)
    attention, types = torch.zeros_like(ids), torch.zeros_like(ids)
    mask = torch.zeros(len(rows), resp_len)
    for i, (prompt, response) in enumerate(rows):
        p, n = len(prompt["input_ids"]), len(response)
        ids[i, prompt_len - p:prompt_len] = prompt["input_ids"]
        types[i, prompt_len - p:prompt_len] = prompt["mm_token_type_ids"]
        ids[i, prompt_len:prompt_len + n] = torch.tensor(response)
        attention[i, prompt_len - p:prompt_len + n] = 1
        mask[i, :n] = 1
    pixels = torch.cat([prompt["pixel_values"] for prompt, _ in rows])
    grid = torch.cat([prompt["image_grid_thw"] for prompt, _ in rows])
    positions, _ = model.model.get_rope_index(ids, types, image_grid_thw=grid, attention_mask=attention)
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions, pixel_values=pixels,
                   image_grid_thw=grid, use_cache=False).logits
    logits = logits[:, prompt_len - 1:-1].float() / upd.BASE["temperature"]  # position t predicts token t + 1
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, prompt_len:, None]).squeeze(-1)
    return dict(logp=logp, mask=mask, adv=torch.tensor([a for r in inputs for _, _, a in r["samples"]]),
                params=dict(model.named_parameters()))


def given_logprobs(update_run, name, key):
    """The old or reference log-probs scenario `name` handed update_policy on both ranks, (24, R) padded."""
    rows = [lp for outcome in update_run["scenarios"][name]["ranks"] for lp in outcome[key]]
    out = torch.zeros(len(rows), max(len(lp) for lp in rows))
    for i, lp in enumerate(rows):
        out[i, :len(lp)] = lp
    return out


def per_token_loss(logp, old, adv, ref, kl_coef):
    """METHOD.md, "Policy loss" and "KL penalty", per token: the dual-clipped surrogate + kl_coef * k3."""
    a = adv[:, None]
    ratio = torch.exp(torch.clamp(logp - old, -20, 20))
    clipped = torch.exp(torch.clamp(logp - old, math.log(1 - 0.2), math.log(1 + 0.3)))
    loss = torch.max(-a * ratio, -a * clipped)
    loss = torch.where(a < 0, torch.min(loss, -3.0 * a), loss)
    if kl_coef:
        d = torch.clamp(ref - logp, -20, 20)
        loss = loss + kl_coef * torch.clamp(torch.exp(d) - d - 1, -10, 10)
    return loss


def expected_update(update_run, reference, name):
    """[(loss, {param: gradient})] per optimizer step of scenario `name`, from the definitions
    (METHOD.md, "Loss aggregation"), one process holding both ranks' sequences (rank r's are rows
    12r .. 12r + 11)."""
    changes, breaks, _, _ = upd.SCENARIOS[name]
    cfg = {**upd.BASE, **changes}
    per_rank = upd.PROMPTS_PER_RANK * cfg["group_size"]
    per_mini = cfg["mini_batch_size"] // 2 * cfg["group_size"]  # this rank's sequences per mini-batch
    logp, mask = reference["logp"], reference["mask"]
    given = {key: None if breaks.get(key) is False else given_logprobs(update_run, name, key) for key in ("old", "ref")}
    old = logp.detach() if given["old"] is None else given["old"]  # no old log-probs: old = current, ratio 1
    ref = given["ref"]  # None: --kl-coef 0
    tokens = per_token_loss(logp, old, reference["adv"], ref, cfg["kl_coef"]) * mask
    steps = []
    for start in range(0, per_rank, per_mini):
        mini = [r * per_rank + i for r in range(2) for i in range(start, start + per_mini)]  # both ranks' share
        t, m = tokens[mini], mask[mini]
        if cfg["loss_agg"] == "token":  # every token of the mini-batch counts once
            loss = t.sum() / m.sum()
        elif cfg["loss_agg"] == "seq":  # every sequence counts once
            loss = (t.sum(1) / m.sum(1)).sum() / len(mini)
        elif cfg["loss_agg"] == "drgrpo":  # a constant: sequences x max_response_length
            loss = t.sum() / (len(mini) * cfg["max_response_length"])
        else:  # micro: per rank, token means of micro-batches of micro_batch_size in order, averaged; then over ranks
            size, rank_losses = cfg["micro_batch_size"], []
            for r in range(2):
                own = mini[r * per_mini:(r + 1) * per_mini]
                micros = [own[i:i + size] for i in range(0, len(own), size)]
                rank_losses.append(sum(tokens[b].sum() / mask[b].sum() for b in micros) / len(micros))
            loss = sum(rank_losses) / 2
        names = list(reference["params"])
        grads = torch.autograd.grad(loss, list(reference["params"].values()), retain_graph=True, allow_unused=True)
        steps.append((loss.item(), dict(zip(names, grads))))
    return steps


def assert_same_grads(got, expected, what):
    """The optimizer's gradients (None: the parameter got none) against the reference, every parameter."""
    assert got.keys() == expected.keys(), what
    missing = [name for name, g in got.items() if g is None and expected[name] is not None]
    wrong = {name: (g - expected[name]).abs().max().item() for name, g in got.items() if g is not None
             and not torch.allclose(g, expected[name], rtol=1e-4, atol=1e-6)}
    assert not missing and not wrong, f"{what}: no gradient for {missing}; max differences {wrong}"


@pytest.mark.parametrize("name", ["token", "seq", "drgrpo", "two_minis", "on_policy"])
def test_update_policy_equals_one_process_holding_the_whole_mini_batch(update_run, reference, name):
    """Broken: update_policy's global normaliser (`denom`: tokens, sequences or sequences x T over all
    ranks), its backward scale (x world size against FSDP's average), the mini-batch split and the
    zero_grad between mini-batches, the on-policy path (no old log-probs: old = current), the packed
    micro-batches (prompt shared by its responses, shared_prompt_attention, the chunked LM head), or
    FSDP2's gradients after the no-grad log-prob pass that precedes the update: the gradients the
    optimizer is given are not those of one global mean (fp32), or some parameters get none."""
    run, expected = update_run["scenarios"][name], expected_update(update_run, reference, name)
    assert [o["steps"] for o in run["ranks"]] == [len(expected)] * 2 and len(run["grads"]) == len(expected)
    for k, ((loss, grads), got) in enumerate(zip(expected, run["grads"])):
        assert_same_grads(got, grads, (name, k))
    for outcome in run["ranks"]:  # the logged loss: the mean of the mini-batches' global losses
        assert outcome["stats"]["loss"] == pytest.approx(sum(loss for loss, _ in expected) / len(expected), rel=1e-5)
        assert "update/skipped" not in outcome["stats"]
    if name == "token":  # the inputs reach every branch of the surrogate: PPO clip both sides, dual clip
        old = given_logprobs(update_run, name, "old")
        ratio = torch.exp(reference["logp"].detach() - old)[reference["mask"].bool()]
        adv = reference["adv"][:, None].expand_as(reference["mask"])[reference["mask"].bool()]
        assert ((ratio > 1.3) & (adv > 0)).any() and ((ratio < 0.8) & (adv < 0)).any()
        assert ((ratio > 3) & (adv < 0)).any()


def test_update_policy_micro_is_the_released_forks(update_run, reference):
    """Broken: --loss-agg micro, the released fork's loss: a token mean inside each micro-batch of
    --micro-batch-size sequences (here 5, 5, 2 per rank: uneven), divided by the micro-batches per rank,
    then averaged over the ranks by FSDP; the KL term aggregated the same way."""
    run = update_run["scenarios"]["micro"]
    [(loss, grads)] = expected_update(update_run, reference, "micro")
    assert [o["steps"] for o in run["ranks"]] == [1, 1]
    assert [f["seqs"] for o in run["ranks"] for f in o["forwards"]] == [5, 5, 2] * 2  # in order, no token budget
    assert_same_grads(run["grads"][0], grads, "micro")
    assert run["ranks"][0]["stats"]["loss"] == pytest.approx(loss, rel=1e-5)
    # uneven micro-batches: not the global token mean
    assert abs(loss - update_run["scenarios"]["token"]["ranks"][0]["stats"]["loss"]) > 1e-3


def test_update_policy_clips_the_global_grad_norm(update_run, reference):
    """Broken: --grad-clip: the norm is not the global one (all ranks' shards, all parameters), or the
    gradients are not scaled by max_norm / (norm + 1e-6) before the optimizer step."""
    run = update_run["scenarios"]["clipped"]
    [(_, grads)] = expected_update(update_run, reference, "clipped")
    norm = torch.sqrt(sum(g.square().sum() for g in grads.values() if g is not None)).item()
    for outcome in run["ranks"]:
        assert outcome["stats"]["grad_norm"] == pytest.approx(norm, rel=1e-4)  # the norm before clipping
    scale = upd.SCENARIOS["clipped"][0]["grad_clip"] / (norm + 1e-6)
    assert scale < 1e-2  # it bites
    assert_same_grads(run["grads"][0], {k: None if g is None else g * scale for k, g in grads.items()}, "clipped")


def test_update_policy_token_budget_micro_batches(update_run):
    """Broken: packing.micro_batches as update_policy uses it: a different count of forwards on the two
    ranks (FSDP2 would hang), a micro-batch over the token budget, a sequence dropped or run twice,
    or no packing of several prompts' rows / no split of a group that does not fit."""
    ranks = update_run["scenarios"]["token"]["ranks"]
    forwards = [o["forwards"] for o in ranks]
    assert len(forwards[0]) == len(forwards[1]) > 1  # the same count of forwards on both ranks
    assert all(f["tokens"] <= upd.TOKEN_BUDGET for fs in forwards for f in fs)  # packed rows x longest row
    for o in ranks:
        [batches] = o["micro_batches"]  # one mini-batch
        assert sorted(i for b in batches for i in b) == list(range(12))  # every sequence exactly once
    assert any(len(f["prompts"]) > 1 for fs in forwards for f in fs)  # micro-batches of several prompts' rows
    # a group split over two micro-batches (its prompt computed twice), on some rank
    assert any(sum(p in f["prompts"] for f in fs) > 1 for fs in forwards for p in range(upd.PROMPTS_PER_RANK))


# --- non-finite updates (the same launch) -----------------------------------------------------------

@pytest.mark.parametrize("name", ["nan_rank1", "inf_rank0", "inf_grad_rank1"])
def test_a_non_finite_update_on_one_rank_is_skipped_on_every_rank(update_run, name):
    """Broken: a NaN or inf advantage on ONE rank, or a finite loss with an inf gradient on one rank,
    reaches the optimizer (the weights would be corrupted), is skipped on one rank only (the ranks'
    weights would diverge), is not reported in the stats (update/skipped), or the ranks count their
    consecutive bad updates differently."""
    ranks = update_run["scenarios"][name]["ranks"]
    bad_in = upd.SCENARIOS[name][2]
    for outcome in ranks:
        assert outcome["exit"] is None
        assert outcome["steps"] == 0, "the optimizer stepped on a non-finite update"
        assert outcome["stats"]["update/skipped"] == 1
        assert outcome["bad_updates"] == bad_in + 1
        assert not math.isfinite(outcome["stats"]["grad_norm"])
    if name == "inf_grad_rank1":  # the loss itself was finite: the grad norm alone must stop the step
        assert all(math.isfinite(o["stats"]["loss"]) for o in ranks)
    else:
        assert not any(math.isfinite(o["stats"]["loss"]) for o in ranks)


def test_a_good_update_resets_the_count_of_bad_ones(update_run):
    """Broken: bad_updates is not reset by a finite update, so bad updates far apart would stop a run."""
    for outcome in update_run["scenarios"]["token"]["ranks"]:  # it started at 2, under --max-bad-updates 3
        assert outcome["steps"] == 1 and outcome["bad_updates"] == 0 and outcome["exit"] is None


def test_max_bad_updates_in_a_row_stop_every_rank(update_run):
    """Broken: --max-bad-updates: the third non-finite update in a row (here NaN advantages on rank 1
    only, in both mini-batches of a step, after one skip) does not stop the run, or stops one rank only
    (the other would wait in a collective forever), or says nothing a person can act on."""
    ranks = update_run["scenarios"]["stop"]["ranks"]
    message = ("step 8: 3 consecutive updates with a non-finite loss or grad norm (--max-bad-updates 3); stopping. "
               "Check the rewards (NaN?), lower --lr, or resume from the last checkpoint.")
    assert [o["exit"] for o in ranks] == [message, message]
    assert [o["steps"] for o in ranks] == [0, 0]


def test_update_policy_frees_the_gradients_when_it_returns(update_run):
    """Broken: the gradients freed (set_to_none) once the step's last optimizer step is done. Held, they are
    as large as the fp32 policy and stay live through the next rollout, next to vLLM's woken share of the
    GPU (on one 80 GB GPU with a 3B model, the difference between fitting and not)."""
    for name, scenario in update_run["scenarios"].items():
        for outcome in scenario["ranks"]:
            if outcome["exit"] is None:  # a run that stops keeps what it has: nothing comes after
                assert outcome["grads_left"] == 0, (name, outcome["grads_left"])


def test_adamw_without_the_foreach_temporary_makes_the_same_update(update_run):
    """Broken: the trainer's AdamW on the single-tensor path (model.adamw, foreach=False), whose
    temporaries are one parameter's, where torch's foreach path on CUDA makes one as large as all the
    parameters; or that path changing the update: three steps on FSDP2's DTensor parameters (2 ranks) must
    equal the foreach path's, bit for bit."""
    adamw = update_run["adamw"]
    assert adamw["trainer_foreach"] is False
    assert adamw["max_diff"] and max(adamw["max_diff"].values()) == 0.0, adamw["max_diff"]
