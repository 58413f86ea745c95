"""The reflective re-ask's prompts, as the engines receive them (METHOD.md, "Reflection prompts"):
well formed whatever the response says, the reference's question where the steps are missing, and
shortened inside the quoted step text when over the limit. Expected prompts are written out from the method's templates."""

import pytest
import torch
from PIL import Image

import data
import engines
import rewards
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
    engine = engines.HFEngine(str(tiny_model_dir), processor, torch.device("cpu"),
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
        requests = rollout.reask_requests(processor, rewards.REASKS[kind], HOSTILE, images, LABELS, 2048)
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
    text, = rollout.reask_requests(processor, rewards.REASKS["text"], [response], [[image]], LABELS, 2048)
    assert text.text.endswith("<|im_start|>user\n<step1>A dark room.</step1> <step2>One would feel sad.</step2>\n"
                              "Which emotion best describes the text above?\nAnswer the question using one "
                              "emotional category (one word only): amusement, anger, contentment, sadness."
                              "<|im_end|>\n<|im_start|>assistant\n")
    img, = rollout.reask_requests(processor, rewards.REASKS["image"], [response], [[image]], LABELS, 2048)
    # "<step1>" up to, not including, "<step2>", stripped: "<step1>A dark room.</step1>"
    assert img.text.endswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>\nCan the following text "
                             "describe the image?Please answer with yes or no.<step1>A dark room.</step1><|im_end|>\n"
                             "<|im_start|>assistant\n")


def test_missing_steps_ask_answer_none(processor, image):
    """Without steps the reference asks the model "Answer 'None'" and scores its reply; a fixed answer
    would score every such response alike."""
    text, img = (rollout.reask_requests(processor, rewards.REASKS[kind], ["no steps \\boxed{anger}"], [[image]],
                                        LABELS, 2048)[0] for kind in ("text", "image"))
    assert text.text.endswith("<|im_start|>user\nAnswer 'None'<|im_end|>\n<|im_start|>assistant\n") and not text.images
    assert img.text.endswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>\nAnswer 'None'<|im_end|>\n"
                             "<|im_start|>assistant\n") and img.images == [image]


def ends_with_the_assistant_opening(request):
    return request.text.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_a_long_re_ask_keeps_its_question_its_image_and_the_assistant_opening(processor, image):
    """A re-ask over the limit was cut on the right: its question, the assistant's opening and (for a
    long enough cut) the image slot went first, and the model was asked to continue the user's text.
    Now the quoted step text loses its end; the rest of the prompt stays, and the prompt fits."""
    long = "<step1>" + "calm sea " * 400 + "</step1><step2>x</step2><step3>y</step3>\\boxed{awe}"
    limit, per_image = 100, data.image_token_count(image, processor)
    text, = rollout.reask_requests(processor, rewards.REASKS["text"], [long], [[image]], LABELS, limit)
    img, = rollout.reask_requests(processor, rewards.REASKS["image"], [long], [[image]], LABELS, limit)
    assert len(text.prompt_ids) <= limit and len(img.prompt_ids) - 1 + per_image <= limit
    assert len(text.prompt_ids) >= limit - 3  # cut to the limit, not far below it
    for request in (text, img):
        assert ends_with_the_assistant_opening(request)
        assert "<step1>calm sea calm sea" in request.text  # the step text's start is kept
        assert processor.tokenizer.decode(request.prompt_ids) == request.text  # ids and text agree
    assert "Which emotion best describes the text above?" in text.text and "amusement, anger" in text.text
    assert "Can the following text describe the image?" in img.text
    assert slots(img.prompt_ids, processor) == 1 and img.images == [image]


def test_re_ask_limits_tight_and_default(processor):
    """With a 400-token image (560 x 560 on the tiny processor), the default limits must send the whole
    re-ask as the released code does (it counts the image as one token); under a tight limit (460 tokens,
    the image's 400 included) the step text is shortened, never the question or the assistant's opening."""
    big = Image.new("RGB", (560, 560), "blue")
    assert data.image_token_count(big, processor) == 400
    response = ("<step1>" + "The picture shows a quiet blue lake under grey clouds. " * 6 + "</step1><step2>"
                + "A viewer would feel calm and a little sad. " * 4 + "</step2><step3>negative</step3>\\boxed{sadness}")
    default = train_grpo.reask_prompt_limit(train_grpo.Config())  # 2048 + 2048 - 16: the engine's context less the answer
    assert default == 4080
    for kind in ("text", "image"):
        whole, = rollout.reask_requests(processor, rewards.REASKS[kind], [response], [[big]], LABELS, default)
        assert whole.text.endswith(rewards.reflection_prompt(kind, response, LABELS).removeprefix("<image>")
                                   + "<|im_end|>\n<|im_start|>assistant\n")  # all of it
        tight, = rollout.reask_requests(processor, rewards.REASKS[kind], [response], [[big]], LABELS, 460)
        expanded = len(tight.prompt_ids) + (399 if kind == "image" else 0)
        assert expanded <= 460 and ends_with_the_assistant_opening(tight)
        if kind == "image":  # the image and the template leave a few tokens: the step text goes, the question stays
            assert len(tight.prompt_ids) < len(whole.prompt_ids) and tight.images == [big]
            question = "Can the following text describe the image?Please answer with yes or no."
            kept = tight.text.split(question, 1)[1].removesuffix("<|im_end|>\n<|im_start|>assistant\n")
            assert rewards.consistency_prompt(response).endswith(question + response.split("<step2>")[0])
            assert response.startswith(kept)  # a prefix of the step text (here a few characters), nothing else
        else:  # without an image it fits whole
            assert tight.prompt_ids == whole.prompt_ids
