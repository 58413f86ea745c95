"""The reflective re-ask's prompts, as the engines receive them (METHOD.md, "Reflection prompts"):
well formed whatever the response says, the reference's question where the steps are missing, and
cut on the right at the prompt limit. Expected prompts are written out from the method's templates."""

import pytest
import torch
from PIL import Image

import data
import rollout
import train_grpo

LABELS = ["amusement", "anger", "contentment", "sadness"]
HOSTILE = [  # a response whose words look like image slots
    "<step1>An <image> beside another <image>.</step1><step2>It feels calm.</step2><step3>positive</step3>\\boxed{awe}",
    "<step1>A red <|image_pad|> wall.</step1><step2>Tense.</step2><step3>negative</step3>\\boxed{anger}",
]


@pytest.fixture(scope="module")
def image():
    return Image.new("RGB", (84, 56), "red")  # already a multiple of 28 on each side: the processor keeps it


@pytest.fixture(scope="module")
def hf_engine(tiny_model_dir, processor):
    engine = rollout.HFEngine(str(tiny_model_dir), processor, torch.device("cpu"),
                              processor.tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    return engine


def slots(ids, processor):
    return sum(i == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") for i in ids)


def test_reflection_prompts_keep_the_response_as_text(processor, image, hf_engine):
    """A response mentioning "<image>" or "<|image_pad|>" would open image slots without images: vLLM
    rejects such a request (the step fails) and HF generate misaligns the image."""
    images = [[image]] * len(HOSTILE)
    per_image = data.image_token_count(image, processor)
    for kind, want in (("text", 0), ("image", 1)):
        requests = train_grpo.reflection_requests(processor, kind, HOSTILE, images, LABELS, 2048)
        for request, response in zip(requests, HOSTILE):
            assert slots(request.prompt_ids, processor) == want  # vLLM's placeholders: one per image
            assert len(request.images) == want
            # the step text comes back out of the ids as the characters it was
            step = response[response.index("<step1>"):response.index("</step2>" if kind == "text" else "<step2>")]
            assert step in processor.tokenizer.decode(request.prompt_ids)
            # HF engine: the one placeholder expands to exactly one image's tokens, none otherwise
            assert slots(hf_engine.inputs(request)["input_ids"][0].tolist(), processor) == want * per_image


def test_questions_are_the_templates(processor, image):
    """The re-ask would not ask what the released code asks."""
    response = "<step1>A dark room.</step1> <step2>One would feel sad.</step2><step3>negative, low</step3>\\boxed{sadness}"
    text, = train_grpo.reflection_requests(processor, "text", [response], [[image]], LABELS, 2048)
    assert text.text.endswith("<|im_start|>user\n<step1>A dark room.</step1> <step2>One would feel sad.</step2>\n"
                              "Which emotion best describes the text above?\nAnswer the question using one "
                              "emotional category (one word only): amusement, anger, contentment, sadness."
                              "<|im_end|>\n<|im_start|>assistant\n")
    img, = train_grpo.reflection_requests(processor, "image", [response], [[image]], LABELS, 2048)
    # "<step1>" up to, not including, "<step2>", stripped: "<step1>A dark room.</step1>"
    assert img.text.endswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>\nCan the following text "
                             "describe the image?Please answer with yes or no.<step1>A dark room.</step1><|im_end|>\n"
                             "<|im_start|>assistant\n")


def test_missing_steps_ask_answer_none(processor, image):
    """Without steps the reference asks the model "Answer 'None'" and scores its reply; a fixed answer
    would score every such response alike."""
    text, img = (train_grpo.reflection_requests(processor, kind, ["no steps \\boxed{anger}"], [[image]], LABELS, 2048)[0]
                 for kind in ("text", "image"))
    assert text.text.endswith("<|im_start|>user\nAnswer 'None'<|im_end|>\n<|im_start|>assistant\n") and not text.images
    assert img.text.endswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>\nAnswer 'None'<|im_end|>\n"
                             "<|im_start|>assistant\n") and img.images == [image]


def test_long_reflection_prompts_are_cut_on_the_right(processor, image):
    """An over-long re-ask would exceed the engine's context (vLLM refuses it) instead of being cut."""
    long = "<step1>" + "calm sea " * 400 + "</step1><step2>x</step2><step3>y</step3>\\boxed{awe}"
    limit, per_image = 100, data.image_token_count(image, processor)
    text, = train_grpo.reflection_requests(processor, "text", [long], [[image]], LABELS, limit)
    img, = train_grpo.reflection_requests(processor, "image", [long], [[image]], LABELS, limit)
    assert len(text.prompt_ids) == limit
    assert len(img.prompt_ids) - 1 + per_image == limit and slots(img.prompt_ids, processor) == 1
    full, = train_grpo.reflection_requests(processor, "text", [long], [[image]], LABELS, 10**6)
    assert text.prompt_ids == full.prompt_ids[:limit]  # the left part is kept as it was
