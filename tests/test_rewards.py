"""Tests for rewards.py: expected numbers are worked out by hand from METHOD.md and the released code."""

import random
import re
import signal
import time

import pytest

import rewards
from rewards import (
    NO_PROMPT_ANSWER,
    VARIANTS,
    r1_omni_answer,
    r1_omni_format,
    variant_for_template,
    coherence_prompt,
    consistency_prompt,
    emor3_reward,
    extract_boxed,
    load_labels,
    load_template,
    normalize_whitespace,
    render_template,
    score_batch,
)

GOOD = (
    "<step1>A man screams at a snake.</step1>\n"
    "<step2>People would feel scared.</step2>\n"
    "<step3>Negative, high arousal.</step3>\n"
    "The answer is \\boxed{fear}"
)
TOP = {v: 2.0 if v == "r1-omni" else 1.1 for v in VARIANTS}  # the highest overall score of each variant
EMOSET = ["amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness"]
KEYS = {"overall", "format", "accuracy", "reflect_text", "reflect_image"}


def test_perfect_response_scores_1_1():
    """The released-code weights are wrong if a perfect SET response with agreeing reflections is not 1.1."""
    score = emor3_reward(GOOD, "fear", reflect_text="fear", reflect_image="yes")
    assert set(score) == KEYS
    assert (score["format"], score["accuracy"], score["reflect_text"], score["reflect_image"]) == (1, 1, 1, 1)
    assert score["overall"] == pytest.approx(1.1)  # 0.8*1 + 0.1*(1+1) + 0.1*1


def test_reflection_off_counts_as_full_marks():
    """Runs without reflection would be penalised if None answers did not score 1 like the reference."""
    score = emor3_reward(GOOD, "fear")
    assert score["reflect_text"] == 1.0 and score["reflect_image"] == 1.0
    assert score["overall"] == pytest.approx(1.1)  # 0.8 + 0.1*(1+1) + 0.1


def test_wrong_answer():
    """Accuracy would leak reward to wrong labels if a wrong boxed answer scored anything."""
    score = emor3_reward(GOOD, "anger", reflect_text="anger", reflect_image="yes")
    assert score["accuracy"] == 0.0 and score["format"] == 1.0
    assert score["overall"] == pytest.approx(0.3)  # 0.8*0 + 0.1*(1+1) + 0.1*1


def test_missing_step3_breaks_format():
    """The SET structure is not enforced if a response without step3 gets format credit."""
    response = "<step1>a</step1><step2>b</step2>\\boxed{fear}"
    score = emor3_reward(response, "fear", "fear", "yes")
    assert score["format"] == 0.0 and score["accuracy"] == 1.0
    assert score["overall"] == pytest.approx(1.0)  # 0.8*1 + 0.1*(1+1) + 0.1*0


def test_format_needs_leading_step1_and_order():
    """Format would accept preambles or shuffled steps, unlike the reference's fullmatch."""
    assert emor3_reward("Sure! " + GOOD, "fear")["format"] == 0.0
    shuffled = "<step1>a</step1><step3>c</step3><step2>b</step2>\\boxed{fear}"
    assert emor3_reward(shuffled, "fear")["format"] == 0.0
    assert emor3_reward(GOOD.replace("\\boxed{fear}", "fear"), "fear")["format"] == 0.0
    # anything may follow the box, and \boxed{} may be empty
    assert emor3_reward(GOOD + "\nThanks.", "fear")["format"] == 1.0
    assert emor3_reward("<step1></step1><step2></step2><step3></step3>\\boxed{}", "")["format"] == 1.0


def test_whitespace_inside_tags_is_normalised():
    """Responses like "< step1 >" (larger Qwen models) lose format credit without the normalisation."""
    response = "< step1 >a</step1>\n<step2>b</ step2>\n<step3 >c</step3>\n\\boxed{fear}"
    score = emor3_reward(response, "fear")
    assert score["format"] == 1.0 and score["accuracy"] == 1.0
    assert normalize_whitespace("a < b > c / d") == "a<b>c/d"
    assert normalize_whitespace("x \n/\t y") == "x/y"


def test_last_boxed_wins():
    """Accuracy would read the wrong answer if the first \\boxed{} were taken instead of the last."""
    response = GOOD.replace("\\boxed{fear}", "\\boxed{anger} no wait \\boxed{fear}")
    assert extract_boxed(response) == "fear"
    assert emor3_reward(response, "fear")["accuracy"] == 1.0
    assert emor3_reward(response, "anger")["accuracy"] == 0.0


def test_boxed_braces_and_strip():
    """extract_boxed drifts from mathruler's semantics (balanced braces, strip, "None") if these change."""
    assert extract_boxed("\\boxed{a{b}c}") == "a{b}c"
    assert extract_boxed("x \\boxed{ Fear } y") == "Fear"
    assert extract_boxed("\\boxed{fear") == "None"  # never closes
    assert extract_boxed("no box here") == "None"
    assert extract_boxed("\\boxed{}") == ""
    assert extract_boxed("\\boxed{a} \\boxed{b{") == "None"  # last box is unclosed; no fallback to the first


def test_accuracy_quirks_kept():
    """Published numbers stop reproducing if accuracy starts normalising answers the reference does not."""
    def accuracy(boxed, label="fear"):
        return emor3_reward(f"<step1></step1><step2></step2><step3></step3>\\boxed{{{boxed}}}", label)["accuracy"]

    assert accuracy(" Fear ") == 1.0  # stripped and lower-cased
    assert accuracy("FEAR") == 1.0
    assert accuracy("fear", label="Fear") == 1.0
    assert accuracy("\\text{fear}") == 0.0
    assert accuracy("fear.") == 0.0
    assert emor3_reward("<step1></step1>\\boxed{fear", "fear")["accuracy"] == 0.0  # "None" != "fear"


def test_reflect_text_rules():
    """The coherence term is wrong if any of the reference's answer rules (0.5 for none/empty, no strip) change."""
    cases = {None: 1.0, "": 0.5, "None": 0.5, "NONE": 0.5, "fear": 1.0, "Fear": 1.0, " fear": 0.0, "anger": 0.0}
    for reflect_text, expected in cases.items():
        assert emor3_reward(GOOD, "fear", reflect_text=reflect_text)["reflect_text"] == expected, reflect_text


def test_reflect_image_rules():
    """The consistency term is wrong if the yes-first substring rules of the reference change."""
    cases = {None: 1.0, "yes": 1.0, "Yes.": 1.0, "no": 0.0, "I don't know": 0.0, "maybe": 0.5, "": 0.5,
             "yes and no": 1.0, NO_PROMPT_ANSWER: 0.0}
    for reflect_image, expected in cases.items():
        assert emor3_reward(GOOD, "fear", reflect_image=reflect_image)["reflect_image"] == expected, reflect_image


def test_no_prompt_answer_scores():
    """A response without steps would be scored differently from the reference's "Answer 'None'" path."""
    score = emor3_reward("\\boxed{fear}", "fear", NO_PROMPT_ANSWER, NO_PROMPT_ANSWER)
    assert (score["reflect_text"], score["reflect_image"], score["format"]) == (0.5, 0.0, 0.0)
    assert score["overall"] == pytest.approx(0.85)  # 0.8*1 + 0.1*(0.5+0) + 0.1*0


def test_variants_overall():
    """An ablation arm would train on the wrong objective if its weighting drifted from the spec."""
    # Right answer, good format; coherence answer "None", consistency answer "maybe".
    # code-rule components: reflect_text 0.5, reflect_image 0.5; paper (binary): 0 and 0.
    def overall(variant, **kw):
        return emor3_reward(GOOD, "fear", "None", "maybe", variant=variant, **kw)

    assert overall("code")["overall"] == pytest.approx(1.0)  # 0.8 + 0.1*(0.5+0.5) + 0.1
    assert overall("paper")["overall"] == pytest.approx(0.9)  # 0.8 + 0.1*mean(0, 0) + 0.1
    assert (overall("paper")["reflect_text"], overall("paper")["reflect_image"]) == (0.0, 0.0)
    assert overall("set")["overall"] == pytest.approx(1.0)  # 0.9 + 0.1; reflections ignored
    assert overall("set")["reflect_text"] == 0.5  # still reported with the code rules
    assert overall("coherence")["overall"] == pytest.approx(0.95)  # 0.8 + 0.1*0.5 + 0.1
    assert overall("multiplicative")["overall"] == pytest.approx(0.325)  # 0.9*1*0.5*0.5 + 0.1
    assert overall("think")["overall"] == pytest.approx(0.9)  # format 0 (no <think>): 0.9*1 + 0.1*0
    # paper variant with agreeing reflections: 0.8 + 0.1*mean(1, 1) + 0.1 = 1.0
    paper = emor3_reward(GOOD, "fear", "Fear", "Yes, it does.", variant="paper")
    assert paper["overall"] == pytest.approx(1.0)
    # paper: coherence right, consistency "no": 0.8 + 0.1*mean(1, 0) + 0.1 = 0.95
    assert emor3_reward(GOOD, "fear", "fear", "no", variant="paper")["overall"] == pytest.approx(0.95)
    # paper with reflection off: None still counts 1 -> 0.8 + 0.1*1 + 0.1 = 1.0
    assert emor3_reward(GOOD, "fear", variant="paper")["overall"] == pytest.approx(1.0)
    # coherence ignores the image answer: 0.8 + 0.1*1 + 0.1 = 1.0 even with "no"
    assert emor3_reward(GOOD, "fear", "fear", "no", variant="coherence")["overall"] == pytest.approx(1.0)
    assert overall("r1-omni")["overall"] == 0.0  # no <answer>: the whole SET response is not "fear"; no <think>
    assert set(VARIANTS) == {"code", "paper", "set", "coherence", "multiplicative", "think", "r1-omni"}


# R1-Omni's two reward functions (HumanMLLM/R1-Omni, src/r1-v/src/open_r1/grpo.py), worked by hand:
#   format   re.fullmatch(r"<think>.*?</think>\s*<answer>.*?</answer>", content, re.DOTALL)
#   accuracy m = re.search(r'<answer>(.*?)</answer>', content); (m.group(1) if m else content).strip() == label
# (response, label, format, accuracy)
R1_OMNI_CASES = [
    ("<think>He frowns.</think><answer>sad</answer>", "sad", 1.0, 1.0),
    ("<think>He frowns.</think>\n \t<answer>sad</answer>", "sad", 1.0, 1.0),  # whitespace between the tags
    ("<think>He frowns.</think>\n<answer>\n sad \n</answer>", "sad", 1.0, 0.0),  # format spans lines, accuracy
    # does not (no DOTALL): no one-line <answer>..</answer>, so the whole response is compared
    ("<think>\nmulti\nline\n</think><answer> sad </answer>", "sad", 1.0, 1.0),  # the content is stripped
    ("<think>x</think> so <answer>sad</answer>", "sad", 0.0, 1.0),  # text between the tags: only whitespace may
    ("<think>x</think><answer>sad</answer> Done.", "sad", 0.0, 1.0),  # text after </answer>: no fullmatch
    ("Sure. <think>x</think><answer>sad</answer>", "sad", 0.0, 1.0),  # text before <think>
    ("<think>x</think>", "sad", 0.0, 0.0),  # no <answer>: the whole response is compared
    ("  sad \n", "sad", 0.0, 1.0),  # ... so a bare label is right, with format 0
    ("<think>x</think><answer>Sad</answer>", "sad", 1.0, 0.0),  # exact match: case counts
    ("<think></think><answer></answer>", "", 1.0, 1.0),  # empty tags match .*?
    ("<think>a</think><answer>happy</answer><answer>sad</answer>", "happy", 1.0, 1.0),  # the first <answer> wins
    ("<think>a</think><answer>happy</answer><answer>sad</answer>", "sad", 1.0, 0.0),
    ("<think>a</think>\n<answer>sad", "sad", 0.0, 0.0),  # unclosed: the whole response is compared
    ("<answer>a\n</answer><answer>sad</answer>", "sad", 0.0, 1.0),  # the first one-line pair is the search's match
    ("<think>a</think><answer>x</think><answer>sad</answer>", "sad", 1.0, 0.0),  # lazy .*? still fullmatches
    ("<think>a</think><answer>sad</answer>", " sad ", 1.0, 1.0),  # the label is stripped too (<answer> sad </answer>)
]


@pytest.mark.parametrize("response, label, fmt, acc", R1_OMNI_CASES)
def test_r1_omni_reward(response, label, fmt, acc):
    """The R1-Omni arm would not be R1-Omni's recipe if its scores differed from its two reward functions."""
    score = emor3_reward(response, label, variant="r1-omni")
    assert (score["format"], score["accuracy"]) == (fmt, acc)
    assert score["overall"] == fmt + acc  # its trainer adds the two functions' rewards, weight 1 each
    assert score["reflect_text"] == score["reflect_image"] == 1.0  # no reflection in the recipe


def test_r1_omni_matches_its_regexes():
    """The linear-time R1-Omni checks are not the released regexes if they disagree on random text."""
    format_pattern = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
    answer_pattern = re.compile(r"<answer>(.*?)</answer>")
    pieces = ["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "\t", "\u3000", "sad", "x", "<", "/"]
    rng = random.Random(7)
    for _ in range(20000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        match = answer_pattern.search(text)
        assert r1_omni_format(text) == (format_pattern.fullmatch(text) is not None), repr(text)
        assert r1_omni_answer(text) == (match.group(1) if match else text).strip(), repr(text)


def test_r1_omni_template():
    """The R1-Omni arm would not see R1-Omni's question if its template drifted from QUESTION_TEMPLATE."""
    assert render_template("r1-omni", "<image>Which emotion? ") == (
        "<image>Which emotion?\nOutput the thinking process in <think> </think> and final emotion in "
        "<answer> </answer> tags.")
    assert variant_for_template("r1-omni") == "r1-omni" and variant_for_template("set") == "code"


def test_think_variant_format():
    """The plain-GRPO baseline would get no format signal if the <think> layout were checked like SET."""
    response = "< think >The man looks scared.</ think>\nSo: \\boxed{Fear}"
    score = emor3_reward(response, "fear", variant="think")
    assert score["format"] == 1.0 and score["accuracy"] == 1.0
    assert score["overall"] == pytest.approx(1.0)  # 0.9*1 + 0.1*1
    assert emor3_reward("<think>x\\boxed{fear}", "fear", variant="think")["format"] == 0.0  # no </think>
    assert emor3_reward(GOOD, "fear", variant="think")["format"] == 0.0
    assert emor3_reward(response, "fear")["format"] == 0.0  # SET format rejects <think>


def test_unknown_variant_raises():
    """A typo in the config's variant would silently train on the default reward."""
    with pytest.raises(ValueError, match="multiplicative"):
        emor3_reward(GOOD, "fear", variant="papr")


def test_never_raises_on_odd_inputs():
    """One odd rollout (None, bytes, unicode, huge text) would crash a whole training step."""
    rng = random.Random(0)
    pieces = ["<step1>", "</step1>", "<step2>", "</step2>", "<step3>", "</step3>", "\\boxed{", "{", "}",
              " ", "\n", "<", ">", "/", "é", "😀", "\u3000", "\x00", "none", "yes", "no", "fear"]
    inputs = [None, 3, b"fear", ["fear"], "", "😀" * 1000, "{" * 100000, "\\boxed{" * 20000, " " * 100000]
    inputs += ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 60))) for _ in range(500)]
    for i, response in enumerate(inputs):
        answer = inputs[(i * 7) % len(inputs)]
        reflect = [None, "", 1.5, response][i % 4]
        for variant in VARIANTS:
            score = emor3_reward(response, answer, reflect, reflect, variant=variant)
            assert set(score) == KEYS and all(isinstance(v, float) for v in score.values())
            assert 0.0 <= score["overall"] <= TOP[variant] + 1e-9
        coherence_prompt(response, EMOSET)
        consistency_prompt(response)


def test_adversarial_inputs_return():
    """The reference regexes backtrack for minutes on inputs like these (its whitespace regex alone is
    quadratic: 30k spaces took 24 s here, 200k would take ~20 min); ours must return within seconds,
    with the right scores and reflection prompts."""
    good_steps = "<step1>a</step1><step2>b</step2>"
    junk_step1 = "<step1>" * 5000 + "</step1>"
    buried = junk_step1 + " " * 100000 + "<step2>x</step2><step3>y</step3>\\boxed{ fear }" + "}" * 50000
    # (response, reflect_text, reflect_image), the answer is "fear";
    # (format, accuracy, reflect_text, reflect_image) of the "code" variant;
    # the <step1>..</step2> text the coherence question quotes and the step1 text the image question
    # quotes (None: not extractable, the prompt is None)
    cases = [
        # no </step1>, no \boxed; the reflection answers are the response itself: not "fear" (0), no yes/no (0.5)
        (("<step1>" * 5000,) * 3, (0.0, 0.0, 0.0, 0.5), None, None),
        (("<step1></step1>" * 5000 + "\\boxed{",) * 3, (0.0, 0.0, 0.0, 0.5), None, None),  # \boxed never closes
        (("a" + " " * 200000 + "b",) * 3, (0.0, 0.0, 0.0, 0.5), None, None),
        (("<step1>" + "<step2>" * 5000,) * 3, (0.0, 0.0, 0.0, 0.5), None, "<step1>"),  # step1 ends at the first <step2>
        # a brace bomb: \boxed{ never closes (answer "None", no "}" after it: format 0); reflection off scores 1 + 1
        ((good_steps + "<step3>c</step3>\\boxed{" + "{" * 100000 + "fear", None, None), (0.0, 0.0, 1.0, 1.0),
         good_steps, "<step1>a</step1>"),
        # a well-formed response buried in junk earns every term; \boxed{ fear } is stripped, the "}"s after it ignored
        ((buried, "fear", "Yes"), (1.0, 1.0, 1.0, 1.0), junk_step1 + " " * 100000 + "<step2>x</step2>", junk_step1),
    ]

    def too_slow(signum, frame):
        raise TimeoutError("the rewards took over 10 s on hostile inputs: a regex is backtracking")

    results = []
    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(10)  # a catastrophic regex fails the test instead of hanging the suite (re checks for signals)
    start = time.perf_counter()
    try:
        for (response, reflect_text, reflect_image), *_ in cases:
            by_variant = {v: emor3_reward(response, "fear", reflect_text, reflect_image, variant=v) for v in VARIANTS}
            results.append((by_variant, coherence_prompt(response, EMOSET), consistency_prompt(response)))
        elapsed = time.perf_counter() - start
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert elapsed < 5.0, f"{elapsed:.2f} s for {len(cases)} hostile responses x {len(VARIANTS)} variants (~0.5 s)"
    text_ask = load_template("reflect_text").replace("{labels}", ", ".join(EMOSET))
    for (inputs, expected, steps, step1), (by_variant, coherence, consistency) in zip(cases, results):
        fmt, acc, reflect_text, reflect_image = expected
        code = by_variant["code"]
        got = tuple(code[k] for k in ("format", "accuracy", "reflect_text", "reflect_image"))
        assert got == expected, inputs[0][:40]
        # the released weights: 0.8 accuracy + 0.1 per reflection term + 0.1 format
        assert code["overall"] == pytest.approx(0.8 * acc + 0.1 * (reflect_text + reflect_image) + 0.1 * fmt)
        for variant, score in by_variant.items():
            assert set(score) == KEYS and 0.0 <= score["overall"] <= TOP[variant] + 1e-9, variant
        assert coherence == (None if steps is None else text_ask.replace("{response}", steps)), inputs[0][:40]
        assert consistency == (None if step1 is None else load_template("reflect_image").replace("{response}", step1))


def test_format_matches_reference_regex():
    """The linear-time format check is not equivalent to the reference's fullmatch regex if this fails."""
    set_pattern = re.compile(r"<step1>.*</step1>.*<step2>.*</step2>.*<step3>.*</step3>.*\\boxed\{.*\}.*", re.DOTALL)
    think_pattern = re.compile(r"<think>.*</think>.*\\boxed\{.*\}.*", re.DOTALL)
    fragments = ["<step1>", "</step1>", "<step2>", "</step2>", "<step3>", "</step3>", "<think>", "</think>",
                 "\\boxed{", "}", "{", "\\boxed", "<step", "1>", "/", "x", "\n", " "]
    rng = random.Random(1234)
    positives = {"code": 0, "think": 0}
    for _ in range(4000):
        # biased toward the right order so that both outcomes occur often
        if rng.random() < 0.5:
            skeleton = ["<step1>", "</step1>", "<step2>", "</step2>", "<step3>", "</step3>", "\\boxed{", "}"]
        else:
            skeleton = ["<think>", "</think>", "\\boxed{", "}"]
        parts = []
        for piece in skeleton:
            if rng.random() < 0.9:
                parts.append(piece)
            parts.extend(rng.choice(fragments) for _ in range(rng.randint(0, 3)))
        if rng.random() < 0.3:
            rng.shuffle(parts)
        text = "".join(parts)
        for variant, pattern in (("code", set_pattern), ("think", think_pattern)):
            # the reward normalises whitespace around < > / first, so the oracle sees the normalised text
            expected = 1.0 if pattern.fullmatch(normalize_whitespace(text)) else 0.0
            got = emor3_reward(text, "x", variant=variant)["format"]
            assert got == expected, (variant, text)
            positives[variant] += int(expected)
    assert positives["code"] > 200 and positives["think"] > 200  # the oracle saw both outcomes


def test_normalisation_matches_reference_regex():
    """The linear-time whitespace normalisation is not equivalent to the reference's re.sub if this fails."""
    fragments = ["<", ">", "/", " ", "  ", "\n", "\t", "\u3000", "\u00a0", "a", "step1", "é"]
    rng = random.Random(99)
    for _ in range(3000):
        text = "".join(rng.choice(fragments) for _ in range(rng.randint(0, 25)))
        assert normalize_whitespace(text) == re.sub(r"\s*(<|>|/)\s*", r"\1", text), repr(text)


def test_step_extraction_matches_reference_regex():
    """Reflection prompts would quote different text than the reference if step extraction drifts."""
    fragments = ["<step1>", "</step1>", "<step2>", "</step2>", "<step3>", "x", " ", "\n", "<step", "2>"]
    rng = random.Random(7)
    for _ in range(3000):
        text = "".join(rng.choice(fragments) for _ in range(rng.randint(0, 12)))
        match = re.search(r"(<step1>.*?</step2>)", text, re.DOTALL)
        steps = match.group(1).strip() if match else ""
        assert rewards._step_text(text, "</step2>", include_end=True) == steps, repr(text)
        match = re.search(r"(<step1>.*?)(?=<step2>)", text, re.DOTALL)
        step1 = match.group(1).strip() if match else ""
        assert rewards._step_text(text, "<step2>", include_end=False) == step1, repr(text)


def test_coherence_prompt_exact_text():
    """The coherence question differs from the reference's prompt (steps 1-2, labels joined by ', ')."""
    expected = (
        "<step1>A man screams at a snake.</step1>\n"
        "<step2>People would feel scared.</step2>\n"
        "Which emotion best describes the text above?\n"
        "Answer the question using one emotional category (one word only): "
        "amusement, anger, awe, contentment, disgust, excitement, fear, sadness."
    )
    assert coherence_prompt(GOOD, EMOSET) == expected
    assert coherence_prompt("  " + GOOD, ["joy", "fear"]).endswith("(one word only): joy, fear.")


def test_consistency_prompt_exact_text():
    """The consistency question differs from the reference's prompt (missing spaces kept, step1 only)."""
    expected = (
        "<image>\n"
        "Can the following text describe the image?Please answer with yes or no."
        "<step1>A man screams at a snake.</step1>"
    )
    assert consistency_prompt(GOOD) == expected


def test_reflection_prompts_none_when_steps_missing():
    """Callers would ask the model about empty text instead of recording "None" if this fails."""
    assert coherence_prompt("\\boxed{fear}", EMOSET) is None
    assert coherence_prompt("<step1>a</step1> \\boxed{fear}", EMOSET) is None  # no </step2>
    assert consistency_prompt("<step1>a</step1> \\boxed{fear}") is None  # no <step2>
    assert consistency_prompt(None) is None
    # the reference extracts from the raw response: "< step1 >" is not found (quirk kept)
    assert coherence_prompt("< step1 >a</step1><step2>b</step2>", EMOSET) is None


def test_coherence_prompt_leaves_braces_in_response():
    """A response containing '{labels}' or '{response}' would be rewritten by template substitution."""
    response = "<step1>odd {labels} and {response} text</step1><step2>b</step2>"
    prompt = coherence_prompt(response, ["joy"])
    assert prompt.startswith("<step1>odd {labels} and {response} text</step1><step2>b</step2>\n")
    assert prompt.endswith(": joy.")
    with pytest.raises(TypeError):
        coherence_prompt(GOOD, "fear")


def test_render_templates():
    """The policy would see a different prompt than in the paper if template rendering drifts from EasyR1's."""
    expected_set = (
        "<image>What emotion?\n"
        "\n"
        "You First think the emotional meaning step by step, and then provide the final answer.\n"
        "\n"
        "The reasoning process MUST follow the structure below:\n"
        "<step1>Identify what in the scene could trigger emotion (action, face, environment).</step1>\n"
        "<step2>Describe how a human would feel about it.</step2>\n"
        "<step3>Conclude if the emotion is positive or negative, and if it's high or low arousal.</step3>\n"
        "\n"
        "The final answer MUST BE put in \\boxed{}."
    )
    assert render_template("set", "  <image>What emotion?  ") == expected_set
    expected_think = (
        "<image>What emotion? You FIRST think about the reasoning process as an internal monologue and then "
        "provide the final answer. The reasoning process MUST BE enclosed within <think> </think> tags. "
        "The final answer MUST BE put in \\boxed{}."
    )
    assert render_template("think", "<image>What emotion?\n") == expected_think
    assert load_template("reflect_image").startswith("<image>\n")
    assert not load_template("reflect_text").endswith("\n")
    with pytest.raises(ValueError, match="reflect_text"):
        load_template("nope")


def test_load_labels(tmp_path):
    """Reflection prompts would list wrong or duplicated labels if label loading were lax."""
    assert load_labels("emoset") == EMOSET
    assert load_labels("emotion6") == ["anger", "disgust", "fear", "joy", "sadness", "surprise"]
    good = tmp_path / "webemo2.txt"
    good.write_text("  positive \n\nnegative\n", encoding="utf-8")
    assert load_labels(str(good)) == ["positive", "negative"]
    duplicated = tmp_path / "dup.txt"
    duplicated.write_text("joy\nfear\njoy\n", encoding="utf-8")
    with pytest.raises(ValueError, match="dup.txt"):
        load_labels(duplicated)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no labels"):
        load_labels(empty)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_labels(tmp_path / "missing.txt")


def test_score_batch():
    """Batch scoring would misalign rewards and rollouts if it zipped lists of different lengths."""
    scores = score_batch([GOOD, "junk"], ["fear", "fear"], ["fear", None], ["no", None])
    assert scores[0]["overall"] == pytest.approx(1.0)  # 0.8 + 0.1*(1+0) + 0.1
    assert scores[1]["overall"] == pytest.approx(0.2)  # 0.8*0 + 0.1*(1+1) + 0.1*0
    assert score_batch([GOOD], ["fear"], variant="set")[0]["overall"] == pytest.approx(1.0)  # 0.9 + 0.1
    with pytest.raises(ValueError, match="equal length"):
        score_batch([GOOD, GOOD], ["fear"])


# --- model-free coherence: do steps 1-2 name exactly one label, the boxed one? ---------------------

EMOTION6 = ["anger", "disgust", "fear", "joy", "sadness", "surprise"]


def set_steps(step1, step2, step3="Negative valence, high arousal.", answer="fear"):
    return (f"<step1>{step1}</step1>\n<step2>{step2}</step2>\n<step3>{step3}</step3>\n"
            f"The answer is \\boxed{{{answer}}}")


@pytest.mark.parametrize("response, expected", [
    # steps name fear only, the boxed answer: coherent
    (set_steps("A man screams at a snake.", "Viewers would feel fear."), 1.0),
    # fear named in both steps, three times: still one label
    (set_steps("Fear on his face.", "Fear, fear."), 1.0),
    # boxed fear, steps name fear and sadness: two labels
    (set_steps("A man screams at a snake.", "Viewers would feel fear and sadness."), 0.0),
    # boxed fear, steps name sadness only
    (set_steps("A crying child.", "Viewers would feel sadness."), 0.0),
    # steps name no label
    (set_steps("A man screams at a snake.", "Viewers would feel uneasy."), 0.0),
    # no steps at all, though the text names fear and boxes it
    ("It is fear. \\boxed{fear}", 0.0),
    # <step1> without </step2>: the re-ask has no step text either
    ("<step1>Viewers would feel fear.</step1> \\boxed{fear}", 0.0),
    # fear named in step 3 only: steps 1-2 name nothing
    (set_steps("A man screams at a snake.", "Viewers would be uneasy.", step3="Clearly fear."), 0.0),
    # step 3 naming another label does not spoil coherent steps 1-2
    (set_steps("A man screams at a snake.", "Viewers would feel fear.", step3="Not joy."), 1.0),
    # case differs in the steps and in the box: FEAR / Fear match fear
    (set_steps("FEAR everywhere.", "Viewers feel Fear.", answer="Fear"), 1.0),
    # "fearful" and "fearsome" are other words, not the label fear: nothing named
    (set_steps("A fearful man.", "A fearsome snake.", answer="fear"), 0.0),
    # "joyful" is not joy, so fear is the only label named
    (set_steps("A joyful dog meets a snake.", "Viewers would feel fear."), 1.0),
    # hyphen and apostrophe end a word: "fear-inducing" and "fear's" name fear
    (set_steps("A fear-inducing snake.", "The scene's fear's source."), 1.0),
    # the boxed answer is not a label: no named label can equal it
    (set_steps("A man screams.", "Viewers would feel fear.", answer="terror"), 0.0),
    # steps name fear, the box says joy
    (set_steps("A man screams.", "Viewers would feel fear.", answer="joy"), 0.0),
    # only the last \boxed{} counts, as in the reward: fear
    (set_steps("A man screams.", "Viewers would feel fear.", answer="joy} or \\boxed{fear"), 1.0),
    # no \boxed{} at all
    ("<step1>A man screams.</step1><step2>Viewers feel fear.</step2><step3>x</step3> fear", 0.0),
    # the reward's strip inside \boxed{} and its whitespace normalisation: " fear " is fear
    ("<step1>A snake.</step1><step2>fear</step2><step3>x</step3>\\boxed{ fear }", 1.0),
    # spaced tags: the re-ask (raw text) finds no steps, so neither does this check
    ("< step1 >A snake.</ step1 ><step2>fear</step2><step3>x</step3>\\boxed{fear}", 0.0),
    # only the first <step1> .. first </step2> counts: the later "sadness" is outside it
    ("<step1>fear</step1><step2>a</step2><step1>sadness</step1><step2>b</step2>"
     "<step3>c</step3>\\boxed{fear}", 1.0),
])
def test_reasoning_names_answer(response, expected):
    """The model-free coherence rate would count responses wrongly (wrong span, substrings, case,
    several labels, a box it does not read like the reward) if a hand-judged response scored otherwise."""
    assert rewards.reasoning_names_answer(response, EMOTION6) == expected


def test_reasoning_names_answer_multiword_and_hyphenated_labels():
    """A multi-word or hyphenated label would also count as the shorter label inside it (two labels,
    so 0) if mentions were not read longest first."""
    labels = ["surprise", "positive surprise", "light", "light-hearted", "fear"]

    def check(step1, step2, answer):
        return rewards.reasoning_names_answer(set_steps(step1, step2, answer=answer), labels)
    # "positive surprise" (across a line break) names that label only, not also "surprise"
    assert check("A party.", "A positive\n surprise.", "positive surprise") == 1.0
    # the box says surprise, the steps name positive surprise: not the answer
    assert check("A party.", "A positive surprise.", "surprise") == 0.0
    # a bare "surprise" next to "positive surprise": two labels
    assert check("A surprise party.", "A positive surprise.", "positive surprise") == 0.0
    # "light-hearted" is one label, not also "light"
    assert check("A light-hearted scene.", "Calm.", "light-hearted") == 1.0
    # "light" alone
    assert check("Soft light.", "Calm.", "light") == 1.0


def test_reasoning_names_answer_odd_inputs():
    """A training step could crash, or a blank label match everywhere, if odd inputs were not handled."""
    good = set_steps("A man screams.", "Viewers would feel fear.")
    assert rewards.reasoning_names_answer(None, EMOTION6) == 0.0  # not a string: no steps
    assert rewards.reasoning_names_answer(good, []) == 0.0  # no labels: none can be named
    assert rewards.reasoning_names_answer(good, ["", "  ", "fear"]) == 1.0  # blank labels are ignored
    assert rewards.reasoning_names_answer(good, ["Fear", "Joy"]) == 1.0  # labels compared lower-cased
    assert rewards.reasoning_names_answer(good, ["f.ar", "fear"]) == 1.0  # labels are literal, not regexes
    with pytest.raises(TypeError, match="list of label strings"):
        rewards.reasoning_names_answer(good, "fear")


def test_reasoning_names_answer_leaves_the_reward_alone():
    """The check is not a reward term: the reward's keys and values would change if it leaked in."""
    assert set(emor3_reward(GOOD, "fear")) == KEYS
    # GOOD's steps name no label ("scared" is not "fear"), though its box is right
    assert rewards.reasoning_names_answer(GOOD, EMOSET) == 0.0
    assert emor3_reward(GOOD, "fear")["overall"] == pytest.approx(1.1)
