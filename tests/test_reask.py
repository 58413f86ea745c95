"""Adding a re-ask question takes an entry in rewards.REASKS, its words, its term in the reward and one
on/off Config field (README, "Your data"): train_grpo.collect_rollouts then sends it through the engine,
each rollout holds its answer under reflections[name], and the reward is given it. Shown with a throwaway
third question in a world of one, on the HF engine and the tiny model."""

import dataclasses

import pytest
import torch
import torch.distributed as dist

import common
import data
import rewards
import engines
import train_grpo

QUESTION = "Is the text above cheerful? Answer yes or no."


@dataclasses.dataclass
class WithValence(train_grpo.Config):
    reflect_valence: bool = True  # ask the throwaway third question


def valence_question(response, labels):
    return "", response[:40], "\n" + QUESTION  # the response's start is the part a long prompt may cut


@pytest.fixture
def world_of_one(monkeypatch):
    for key, value in dict(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29891").items():
        monkeypatch.setenv(key, value)
    dist.init_process_group("gloo")
    yield
    dist.destroy_process_group()


def test_a_third_question_is_asked_and_scored(world_of_one, monkeypatch, tiny_model_dir, demo_dir, processor):
    """Broken: the trainer asks only the two questions it names, or the reward never sees the third answer."""
    monkeypatch.setitem(rewards.REASKS, "valence", rewards.Reask("reflect_valence", False, valence_question,
                                                                 lambda answer, label: float("yes" in answer)))
    seen = {}

    def emor3_reward(response, answer, reflect_text=None, reflect_image=None, reflect_valence=None, variant="code"):
        seen[response] = reflect_valence
        return {**real_reward(response, answer, reflect_text, reflect_image, variant),
                "reflect_valence": rewards.REASKS["valence"].score(reflect_valence, answer)}
    real_reward = rewards.emor3_reward
    monkeypatch.setattr(rewards, "emor3_reward", emor3_reward)

    cfg = WithValence(rollout_batch_size=2, group_size=2, max_response_length=12, reflect_max_tokens=4,
                      max_prompt_length=512, min_pixels=3136, max_pixels=12544)
    assert rewards.reasks_on(cfg) == ["text", "image", "valence"]
    assert rewards.reasks_on(dataclasses.replace(cfg, reflect_valence=False)) == ["text", "image"]

    engine = engines.HFEngine(str(tiny_model_dir), processor, torch.device("cpu"),
                              processor.tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    engine.wake_up(["weights", "kv_cache"])
    calls, generate = [], engine.generate

    def recording(requests, n, temperature, top_p, max_tokens, seed, **kwargs):
        calls.append(([r.text for r in requests], seed))
        return generate(requests, n, temperature, top_p, max_tokens, seed, **kwargs)
    monkeypatch.setattr(engine, "generate", recording)
    train_set = data.PromptDataset(str(demo_dir / "train.jsonl"), processor, min_pixels=3136, max_pixels=12544,
                                   max_prompt_length=512)
    prompts, rollouts, _ = train_grpo.collect_rollouts(engine, processor, train_set, 0, cfg,
                                                       rewards.load_reward(), {})

    assert len(prompts) == 2 and len(rollouts) == 4
    rollout_seed = common.seed_for(cfg.seed, 0, 0, 0)
    assert [seed for _, seed in calls] == [rollout_seed] + [common.seed_for(rollout_seed, question=k)
                                                           for k in (1, 2, 3)]
    valence_texts = calls[3][0]
    assert all(QUESTION in text for text in valence_texts) and len(valence_texts) == 4
    for r, text in zip(rollouts, valence_texts):
        assert set(r.reflections) == {"text", "image", "valence"} and isinstance(r.reflections["valence"], str)
        assert r.text[:40] in text  # the question is about this rollout's own response
        assert seen[r.text] == r.reflections["valence"]  # the reward was given the third answer
        assert r.scores["reflect_valence"] == float("yes" in r.reflections["valence"])
