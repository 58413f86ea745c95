"""How a micro-batch is laid out and scored: the mechanics under train_grpo.py's log-prob and update phases.

- `encode_prompts`: processor tensors of each prompt, once per step (the n responses reuse them);
- `collate`: a packed row per prompt, [prompt | its responses | pad], with the index tensors that say
  where each response's tokens and predicting states are;
- `shared_prompt_attention`: the text decoder's attention over such rows (each response sees its
  prompt and itself, never a sibling), registered with transformers as "shared_prompt";
- `response_logprobs`: the log-probs of the response tokens, the LM head computed chunk by chunk in
  fp32, so full-vocabulary logits never exist for a whole micro-batch;
- `micro_batches`: token-budget micro-batches that keep a prompt's responses together, the same
  count on every rank (FSDP2 gathers weights in each forward);
- `batched_logprobs`, `pad_stack`: no-grad log-probs for many samples; ragged rows to a padded tensor.

Not here: what the log-probs are for (the GRPO loss, the KL term: train_grpo.py), model loading and
sharding (common.py). tests/test_grpo_math.py (via tests/dist_update_check.py) holds the update built on
this file to a plainly padded one-process reference.
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

import data


def register_shared_prompt_attention():
    """Make shared_prompt_attention a transformers attention implementation, "shared_prompt" (with sdpa's
    masks for plain forwards); returns the name. load_model gives it to the text decoder."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    AttentionInterface.register("shared_prompt", shared_prompt_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register("shared_prompt", sdpa_mask)
    return "shared_prompt"


@dataclass
class Sample:
    """One response with everything the update needs."""
    prompt: int  # index into this rank's list of encoded prompts
    response_ids: list
    rollout_logp: list  # the engine's log-probs of the sampled tokens (for the vLLM-vs-FSDP gap)
    advantage: float = 0.0
    weight: float = 1.0  # 0 = run in the forward but left out of the loss (sft.py's dummy image example)


VISUAL_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def encode_prompts(processor, prompts):
    """Processor tensors for each prompt, once: the n responses and every log-prob pass reuse them.
    Images and videos go through data.processor_inputs, the one call that also serves the datasets."""
    encoded = []
    for p in prompts:
        t = data.processor_inputs(processor, [p.text], p.images, getattr(p, "videos", None))
        item = {"input_ids": t["input_ids"][0], "mm_token_type_ids": t["mm_token_type_ids"][0]}
        # text-only prompts (sft.py's coherence examples) carry no pixels
        item.update({k: torch.as_tensor(t[k]) for k in VISUAL_KEYS if k in t})
        encoded.append(item)
    return encoded


def has_visual(item):
    """Whether an encoded prompt (or a collated batch) runs the vision tower."""
    return "pixel_values" in item or "pixel_values_videos" in item


def mrope_positions(config, input_ids, mm_token_type_ids, image_grid_thw=None, video_grid_thw=None,
                    second_per_grid_ts=None, attention_mask=None):
    """Qwen2.5-VL's 3-D positions (3, B, L) of each row's tokens where attention_mask is 1 (others 0), as
    vLLM computes them (Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions) and as the model
    was trained: text counts up by one on all three axes; an image or video block of (t, h, w) merged
    patches gets (start + t * tokens_per_second * second_per_grid, start + h, start + w); text after a
    block continues at the largest position so far + 1.

    Not transformers 5.19's get_rope_index: after a video it continues at start + max(h, w), ignoring
    the time axis, so text after a clip reuses positions its frames hold; with those positions the tiny
    model's log-probs of vLLM's own greedy tokens differed from vLLM's by up to 6.4 (ours: 5e-6). For
    images (t = 1) the two agree, and tests/test_video_packing.py holds them equal there.
    """
    merge = config.vision_config.spatial_merge_size
    per_second = getattr(config.vision_config, "tokens_per_second", 1.0)
    rows, width = input_ids.shape
    positions = torch.zeros(3, rows, width, dtype=torch.long, device=input_ids.device)
    grids = {1: iter(image_grid_thw.tolist() if image_grid_thw is not None else []),
             2: iter(video_grid_thw.tolist() if video_grid_thw is not None else [])}
    seconds = iter(torch.as_tensor(second_per_grid_ts).tolist() if second_per_grid_ts is not None else [])
    for r in range(rows):
        keep = (attention_mask[r].bool() if attention_mask is not None
                else torch.ones(width, dtype=torch.bool, device=input_ids.device))
        types = mm_token_type_ids[r][keep].tolist()
        parts, start, i = [], 0, 0
        while i < len(types):
            j = i
            while j < len(types) and types[j] == types[i]:
                j += 1
            if types[i] == 0:  # text
                parts.append(torch.arange(j - i).expand(3, -1) + start)
                start += j - i
                i = j
                continue
            t, h, w = next(grids[types[i]])
            h, w = h // merge, w // merge
            block = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"))
            block = block.reshape(3, -1)
            if types[i] == 2:  # time: each temporal patch is second_per_grid seconds after the previous one
                block[0] = (block[0] * (next(seconds) * per_second)).long()
            parts.append(block + start)
            start = int(parts[-1].max()) + 1
            i += t * h * w  # consecutive blocks of one modality (two images in a row) are separate
        if parts:
            positions[:, r, keep] = torch.cat(parts, 1).to(input_ids.device)
    deltas = positions.amax(dim=(0, 2)) + 1 - (attention_mask.sum(1) if attention_mask is not None else width)
    return positions, deltas[:, None]


def packed_lengths(samples, encoded):
    """{prompt: length of its packed row} for these samples, in order of first use: the prompt once,
    then each of its responses (collate's rows; micro_batches budgets with them)."""
    rows = {}
    for s in samples:
        rows[s.prompt] = rows.get(s.prompt, len(encoded[s.prompt]["input_ids"])) + len(s.response_ids)
    return rows


def collate(samples, encoded, pad_id, device):
    """Packed rows, one per distinct prompt: [prompt | its 1st response | its 2nd response | ... | pad].

    The n responses to one prompt share its forward: the prompt (image tokens and the long SET
    instructions, most of a sequence) goes through the model once per micro-batch instead of n times,
    and so does its image through the vision tower. Each response must still see only the prompt and
    itself, at the positions it would have alone: `in_prompt` and `offset` (a token's place in its
    response) give response_logprobs the positions, and the index tensors give shared_prompt_attention
    its layout. All indices point into the flattened (rows x L) sequence:
      prompt_index (B, P)  sample b's prompt tokens (P = the longest prompt; beyond its own length: masked)
      token_index  (B, R)  its response tokens (R = the longest response; beyond its length: clamped, masked)
      logit_index  (B, R)  the state predicting each response token: the prompt's last token for the
                           first one, the previous response token after that
    So every response's log-probs are those of the plain [prompt | response] sequence; tests/test_grpo_math.py
    (via tests/dist_update_check.py) compares the two.
    """
    lengths = packed_lengths(samples, encoded)
    rows, width = list(lengths), max(lengths.values())  # distinct prompts, in order of first use
    row_of = {p: r for r, p in enumerate(rows)}
    used = [len(encoded[p]["input_ids"]) for p in rows]  # tokens filled so far in each row
    prompt_width, resp_len = max(used), max(len(s.response_ids) for s in samples)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mm_types = torch.zeros_like(input_ids)
    in_prompt = torch.zeros_like(input_ids, dtype=torch.bool)
    offset = torch.zeros_like(input_ids)
    for r, p in enumerate(rows):
        input_ids[r, :used[r]] = encoded[p]["input_ids"]
        mm_types[r, :used[r]] = encoded[p]["mm_token_type_ids"]
        in_prompt[r, :used[r]] = True
    response_ids = torch.full((len(samples), resp_len), pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(samples), resp_len), dtype=torch.float32)
    logit_index, token_index = torch.zeros_like(response_ids), torch.zeros_like(response_ids)
    prompt_index = torch.zeros((len(samples), prompt_width), dtype=torch.long)
    prompt_len = torch.zeros(len(samples), dtype=torch.long)
    for b, s in enumerate(samples):
        r, n, p = row_of[s.prompt], len(s.response_ids), len(encoded[s.prompt]["input_ids"])
        start = used[r]
        input_ids[r, start:start + n] = response_ids[b, :n] = torch.tensor(s.response_ids, dtype=torch.long)
        offset[r, start:start + n] = torch.arange(n)
        response_mask[b, :n] = 1
        columns = torch.arange(start, start + resp_len).clamp(max=width - 1)
        token_index[b] = r * width + columns
        logit_index[b] = r * width + torch.cat([torch.tensor([p - 1]), columns[:-1]])
        prompt_index[b] = r * width + torch.arange(prompt_width)
        prompt_len[b] = p
        used[r] += n
    batch = dict(input_ids=input_ids, mm_token_type_ids=mm_types, in_prompt=in_prompt, offset=offset,
                 response_ids=response_ids, response_mask=response_mask, logit_index=logit_index,
                 token_index=token_index, prompt_index=prompt_index, prompt_len=prompt_len)
    for key in VISUAL_KEYS:  # in row order, as the rows' placeholders come; text-only prompts (sft.py) have none
        parts = [encoded[p][key] for p in rows if key in encoded[p]]
        if parts:
            batch[key] = torch.cat(parts)
    # second_per_grid_ts only feeds the positions (computed here, on the host); the rest goes to the device
    return {k: v if k == "second_per_grid_ts" else v.to(device) for k, v in batch.items()}


def shared_prompt_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, packed=None,
                            **kwargs):
    """The text decoder's attention (a transformers attention function) over collate()'s packed rows.

    A mask over a packed row [P | r1 | ... | rn] would make sdpa compute every (query, key) pair of
    (P + n r)^2 and throw most away (responses never see each other). Instead: (1) the first P columns
    attend causally among themselves, which is exactly the prompt's own attention; (2) each response's
    queries are gathered with the keys of its prompt and of itself, (B, R) queries against (B, P + R)
    keys: B r (P + r) pairs for the n responses instead of (P + n r)^2. Results land back in place.
    Without `packed` (any plain forward) this is PyTorch sdpa with transformers' usual mask.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    if packed is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    rows, heads, width, dim = query.shape
    prompt_width = packed["prompt_index"].shape[1]
    gqa = dict(scale=scaling, enable_gqa=key.shape[1] != heads)
    out = query.new_zeros(rows, width, heads, dim)
    # (1) prompts; a shorter prompt's row has response tokens among these columns: (2) overwrites them
    out[:, :prompt_width] = F.scaled_dot_product_attention(
        query[:, :, :prompt_width], key[:, :, :prompt_width], value[:, :, :prompt_width], is_causal=True,
        **gqa).transpose(1, 2)
    # (2) responses: (B, heads, R, dim) queries against their own (B, heads, P + R, dim) keys. The key and
    # value heads are expanded to the query heads here rather than passed with enable_gqa: on CUDA, sdpa
    # with a boolean mask and enable_gqa=True rules out the flash kernel and may fall back to the math
    # kernel, which materialises all B x heads x R x (P + R) scores; with equal head counts the
    # memory-efficient kernel takes the mask. (The causal call above has no mask: flash handles its GQA.)
    flat = lambda t: t.transpose(1, 2).reshape(rows * width, t.shape[1], dim)  # noqa: E731
    keys = torch.cat([packed["prompt_index"], packed["token_index"]], 1)
    groups = heads // key.shape[1]
    answer = F.scaled_dot_product_attention(
        flat(query)[packed["token_index"]].transpose(1, 2),
        flat(key)[keys].transpose(1, 2).repeat_interleave(groups, dim=1),
        flat(value)[keys].transpose(1, 2).repeat_interleave(groups, dim=1),
        attn_mask=packed["key_mask"], scale=scaling).transpose(1, 2)
    valid = packed["valid"]
    out = out.view(rows * width, heads, dim).index_put((packed["token_index"][valid],), answer[valid])
    return out.view(rows, width, heads, dim), None


LOGPROB_CHUNK = 1024  # response tokens per LM-head chunk: at most (1024, vocab) fp32 logits exist at once


def response_logprobs(model, batch, temperature, chunk=LOGPROB_CHUNK):
    """Log-probs (B, R) of the response tokens of collate()'s packed rows under `model`, logits divided
    by the temperature.

    Positions: the prompt's come from mrope_positions (image and video tokens get 3-D positions, as vLLM
    gives them; without them transformers 5 silently falls back to 1-D ones and the log-probs are wrong); each
    response continues from the prompt's largest position + 1, all three components together, as
    text after an image does. The attention layout (which keys each response sees) goes to
    shared_prompt_attention as the `packed` keyword. The LM head computes log-probs, not logits, and
    only at `logit_index`: `chunk` tokens at a time, each chunk recomputed in backward (checkpointed),
    so full-vocabulary fp32 logits exist for one chunk only, never for the micro-batch. The head runs
    inside the model's forward because that is where FSDP2 has gathered its (tied) weight.
    """
    if model.config.get_text_config()._attn_implementation != "shared_prompt":  # it would ignore the layout
        raise ValueError("response_logprobs needs the text decoder on shared_prompt_attention: load the model "
                         "with load_model, or see register_shared_prompt_attention")
    targets, in_prompt = batch["response_ids"], batch["in_prompt"]
    positions, _ = mrope_positions(model.config, batch["input_ids"], batch["mm_token_type_ids"],
                                   batch.get("image_grid_thw"), batch.get("video_grid_thw"),
                                   batch.get("second_per_grid_ts"), attention_mask=in_prompt)
    after_prompt = positions.amax(dim=(0, 2)) + 1  # (rows,): positions outside the prompt are 0 here
    positions = torch.where(in_prompt, positions, after_prompt[:, None] + batch["offset"])
    # which keys response b's query k sees: its prompt's tokens, then its own tokens up to k
    (samples, prompt_width), resp_len = batch["prompt_index"].shape, targets.shape[1]
    sees_prompt = torch.arange(prompt_width, device=targets.device) < batch["prompt_len"][:, None]  # (B, P)
    sees_own = torch.ones(resp_len, resp_len, dtype=torch.bool, device=targets.device).tril()  # (R, R)
    key_mask = torch.cat([sees_prompt[:, None].expand(-1, resp_len, -1), sees_own.expand(samples, -1, -1)], -1)
    packed = dict(prompt_index=batch["prompt_index"], token_index=batch["token_index"], key_mask=key_mask[:, None],
                  valid=batch["response_mask"].bool())
    head = model.lm_head

    def chunk_logprobs(hidden, weight, ids):
        # fp32 logits even under bf16 compute: bf16 keeps 8 bits of mantissa, so logits of size ~20 would
        # carry errors of ~0.1, as large as the PPO clip range. A chunk is small enough to afford fp32.
        logits = F.linear(hidden.float(), weight.float()) / temperature
        return torch.log_softmax(logits, -1).gather(-1, ids[:, None]).squeeze(-1)

    def head_logprobs(hidden):  # (rows, L, H) -> (B, R): the states at logit_index, chunk by chunk
        hidden, ids = hidden.reshape(-1, hidden.shape[-1])[batch["logit_index"].reshape(-1)], targets.reshape(-1)
        parts = []
        for i in range(0, len(ids), chunk):
            args = (hidden[i:i + chunk], head.weight, ids[i:i + chunk])
            parts.append(torch.utils.checkpoint.checkpoint(chunk_logprobs, *args, use_reentrant=False)
                         if torch.is_grad_enabled() else chunk_logprobs(*args))
        return torch.cat(parts).view(targets.shape).clone()  # not a view: FSDP2 hooks the output for backward

    # The forward ends in the LM head, and only there has FSDP2 gathered the head's (tied) weight: so for
    # this one call the head returns the (B, R) log-probs instead of (rows, L, vocab) logits, and they come
    # out of the forward in the field named `logits`. The class's own forward is restored afterwards.
    head.forward = head_logprobs
    try:
        logp = model(input_ids=batch["input_ids"], position_ids=positions, pixel_values=batch.get("pixel_values"),
                     image_grid_thw=batch.get("image_grid_thw"), pixel_values_videos=batch.get("pixel_values_videos"),
                     video_grid_thw=batch.get("video_grid_thw"), use_cache=False, packed=packed).logits
    finally:
        del head.forward
    return logp


def micro_batches(samples, encoded, indices, max_size, max_tokens):
    """Split `indices` into micro-batches of at most `max_size` sequences and (if max_tokens) at most
    `max_tokens` tokens as collate() packs them (rows x longest row; a row is one prompt and its
    responses in the batch). A prompt's responses stay together where they fit, and groups go in
    order of their packed length, so rows of one micro-batch are alike and little padding is computed.
    Every rank must run the same number of forwards (FSDP2 gathers the weights in each), so all take
    the largest count and split their biggest micro-batches to match.
    """
    groups = {}
    for i in indices:
        groups.setdefault(samples[i].prompt, []).append(i)

    def cost(batch):  # tokens collate() computes for these samples: rows x the longest row
        rows = packed_lengths([samples[i] for i in batch], encoded)
        return len(rows) * max(rows.values())

    batches = [[]]
    for group in sorted(groups.values(), key=cost):
        for i in group:
            full = len(batches[-1]) == max_size or (max_tokens and cost(batches[-1] + [i]) > max_tokens)
            if batches[-1] and full:
                batches.append([])
            batches[-1].append(i)
    count = torch.tensor(len(batches))
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    while len(batches) < count:  # count <= len(indices), the same on every rank: a batch of 2+ exists
        k = max(range(len(batches)), key=lambda b: cost(batches[b]) if len(batches[b]) > 1 else -1)
        half = len(batches[k]) // 2
        batches[k:k + 1] = [batches[k][:half], batches[k][half:]]
    return batches


@torch.no_grad()
def batched_logprobs(model, samples, encoded, micro_batch_size, micro_batch_tokens, pad_id, device, temperature):
    """Log-probs for all samples, in micro-batches; a list of 1-D tensors (one per sample, in order), left
    on the device: the update reads them there."""
    out = [None] * len(samples)
    for micro in micro_batches(samples, encoded, range(len(samples)), micro_batch_size, micro_batch_tokens):
        chunk = [samples[i] for i in micro]
        logp = response_logprobs(model, collate(chunk, encoded, pad_id, device), temperature)
        for k, i in enumerate(micro):
            out[i] = logp[k, :len(samples[i].response_ids)]
    if hasattr(model, "reshard"):
        # FSDP2 keeps the root module's parameters unsharded after a forward (it expects the backward
        # next). Left so, the update's backward never reduce-scatters the root's gradients: the vision
        # patch embedding, merger, token embedding / tied LM head and final norm silently got none
        # whenever old log-probs were computed (more than one update per rollout, EMO-R3's default).
        model.reshard()
    return out


def pad_stack(rows, length, device):
    """1-D tensors -> (len(rows), length), zero-padded."""
    out = torch.zeros((len(rows), length), device=device)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r.to(device)
    return out
