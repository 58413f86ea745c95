"""GRPO math of train_grpo.py against hand-worked values (METHOD.md, "GRPO").

Every expected number below is worked out from the spec in the comment beside it; the last tests check
that the trainer's micro-batch / multi-rank bookkeeping (`denom`, `loss * world_size` under FSDP2)
gives exactly the loss and gradient of one process holding the whole mini-batch.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


# --- global token mean across micro-batches and ranks (FSDP2, torchrun, gloo) -------------------

@pytest.fixture(scope="module")
def dist_results(tmp_path_factory):
    """Run tests/dist_token_mean.py on 2 ranks once; {(agg, micro_batch_size): {"loss", "grads"}}."""
    out = tmp_path_factory.mktemp("dist") / "results.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "tests/dist_token_mean.py", str(out)], cwd=REPO, env=env, timeout=300,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("agg", ["token", "seq", "drgrpo"])
def test_micro_batches_and_ranks_equal_one_full_batch(dist_results, agg):
    """Broken: the trainer's denom / (loss * world_size) bookkeeping; micro-batches or ranks do not add up to one mean."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import dist_token_mean as d

    model = d.build_policy()  # the same seed-0 weights every rank started from
    b = d.make_batch()
    logp = d.token_logprobs(model, b["tokens"])  # the whole mini-batch, padded to T_MAX, one process
    loss, metrics = policy_loss(logp, b["old_logp"], b["advantages"], b["mask"], agg=agg)
    loss = loss + d.KL_COEF * aggregate(kl_penalty(logp, b["ref_logp"]), b["mask"], agg)
    loss.backward()
    # the toy batch reaches every branch: PPO clip and dual clip
    assert metrics["clip_frac_high"] > 0 and metrics["clip_frac_low"] > 0
    for micro_size in d.MICRO_SIZES:
        got = dist_results[(agg, micro_size)]
        assert torch.allclose(got["loss"], loss.detach(), rtol=0, atol=1e-6), (micro_size, got["loss"], loss)
        for name, p in model.named_parameters():
            assert torch.allclose(got["grads"][name], p.grad, rtol=0, atol=1e-6), (micro_size, name)


@pytest.mark.parametrize("micro_size", [2, 1, 3])
def test_micro_aggregation_is_the_released_forks(dist_results, micro_size):
    """Broken: --loss-agg micro, the released fork's loss: a token mean inside each micro-batch of
    `micro_size` sequences, divided by the number of micro-batches per rank (gradient accumulation),
    then averaged over the ranks by FSDP; the KL term aggregated the same way (METHOD.md, "Loss
    aggregation"). The reference below is that formula, written out for the 2 ranks x 4 sequences."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import dist_token_mean as d

    model = d.build_policy()
    b = d.make_batch()
    rank_losses = []
    for mine in ([0, 1, 2, 3], [4, 5, 6, 7]):  # rank 0's and rank 1's sequences
        micros = [mine[i:i + micro_size] for i in range(0, len(mine), micro_size)]
        per_micro = []
        for micro in micros:
            logp = d.token_logprobs(model, b["tokens"][micro])
            mask = b["mask"][micro]
            tokens = mask.sum()  # this micro-batch's own token count
            surrogate, _ = policy_loss(logp, b["old_logp"][micro], b["advantages"][micro], mask, agg="token",
                                       denom=tokens)
            kl = (kl_penalty(logp, b["ref_logp"][micro]) * mask).sum() / tokens
            per_micro.append(surrogate + d.KL_COEF * kl)
        rank_losses.append(sum(per_micro) / len(micros))
    loss = sum(rank_losses) / 2  # FSDP's mean over the 2 ranks
    loss.backward()
    got = dist_results[("micro", micro_size)]
    assert torch.allclose(got["loss"], loss.detach(), rtol=0, atol=1e-6), (got["loss"], loss)
    for name, p in model.named_parameters():
        assert torch.allclose(got["grads"][name], p.grad, rtol=0, atol=1e-6), name
    if micro_size == 3:  # uneven micro-batches ([3, 1] per rank): not the global token mean
        token = dist_results[("token", micro_size)]["loss"]
        assert abs(token - got["loss"]) > 1e-3


def test_backward_scale_by_hand():
    """Broken: the factor a micro-batch's loss gets before backward. One rank, micro-batches with token
    losses [1, 2, 3] and [4, 5]: micro mean = (2 + 4.5) / 2 = 3.25; global token mean = 15 / 5 = 3."""
    from train_grpo import backward_scale
    values = [torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[4.0, 5.0]])]
    micro = sum(aggregate(v, torch.ones_like(v), "token") * backward_scale("micro", 2, 1) for v in values)
    token = sum(aggregate(v, torch.ones_like(v), "token", denom=5.0) * backward_scale("token", 2, 1) for v in values)
    assert micro.item() == 3.25 and token.item() == 3.0
    assert backward_scale("token", 2, 8) == 8.0 and backward_scale("micro", 4, 8) == 0.25


# --- token-budget micro-batches and the chunked LM head (tiny Qwen2.5-VL, FSDP2, 2 ranks) ----------

def test_token_budget_packed_micro_batches_equal_one_padded_batch(tiny_model_dir, demo_dir, tmp_path):
    """Broken: packed rows (a prompt shared by its responses: mask, positions, logit_index), the
    token-budget micro-batches, their equalised count across ranks, or the chunked log-prob head
    change the loss or the gradients of the update against plainly padded sequences (fp32)."""
    out = tmp_path / "results.pt"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "tests/dist_microbatch_check.py", str(tiny_model_dir), str(demo_dir / "train.jsonl"),
                           str(out)], cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = torch.load(out, weights_only=True)
    shapes = r["shapes"]
    assert len(shapes[0]["tokens"]) == len(shapes[1]["tokens"]) > 1  # the same count of forwards on both ranks
    assert all(t <= 500 for s in shapes for t in s["tokens"])  # each within the token budget
    assert all(s["seqs"] == list(range(12)) for s in shapes)  # every sequence exactly once
    assert any(len(rows) > 1 for s in shapes for rows in s["rows"])  # micro-batches of several prompts' rows
    # a group split over two micro-batches (its prompt computed twice), on some rank
    assert any(sum(p in rows for rows in s["rows"]) > 1 for s in shapes for p in range(4))
    (plain_loss, plain_grads), (loss, grads) = r["plain"], r["packed"]
    assert torch.allclose(loss, plain_loss, rtol=1e-5, atol=1e-7), (loss, plain_loss)
    assert plain_grads.keys() == grads.keys()
    for name in grads:
        assert torch.allclose(grads[name], plain_grads[name], rtol=1e-4, atol=1e-6), name
