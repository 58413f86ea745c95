"""
EMO-R3 reward: scores one rollout from its text, its label, and the policy's two reflection answers.

What is scored (METHOD.md, "Reward"):
- format        1 if the response follows the SET layout <step1>..</step1>..<step2>..</step2>..
                <step3>..</step3>..\\boxed{..} (or <think>..</think>..\\boxed{..} for the baseline)
- accuracy      1 if the last brace-balanced \\boxed{...} equals the label, case-insensitively
- reflect_text  "emotional coherence": the policy read its own step1-step2 text and named an emotion
- reflect_image "visual-text consistency": the policy said whether its step1 text describes the image

Variants (ablation arms; "code" is the default because it produced the published numbers):
- "code"           released code: 0.8*acc + 0.1*(reflect_text + reflect_image) + 0.1*format, with the
                   graded reflection rules (0.5 for "none"/empty/unsure). Range 0 to 1.1.
- "paper"          paper's formula: 0.8*acc + 0.1*mean(reflect_text, reflect_image) + 0.1*format with
                   binary reflection scores. Range 0 to 1.
- "set"            SET without reflection: 0.9*acc + 0.1*format.
- "coherence"      SET + coherence only: 0.8*acc + 0.1*reflect_text + 0.1*format.
- "multiplicative" the authors' commented-out form: 0.9*acc*reflect_text*reflect_image + 0.1*format.
- "think"          plain-GRPO baseline: <think> format, 0.9*acc + 0.1*format.
- "r1-omni"        R1-Omni's recipe (HumanMLLM/R1-Omni, src/r1-v/src/open_r1/grpo.py): accuracy + format, each
                   0 or 1, so 0 to 2. Format: re.fullmatch(r"<think>.*?</think>\s*<answer>.*?</answer>", DOTALL)
                   on the raw response. Accuracy: the stripped content of the first <answer>..</answer> on one
                   line (re.search without DOTALL), or the whole stripped response when there is none, equals
                   the label exactly (case-sensitive). Its math_verify check, tried first, never matches a word
                   label and is left out. Used with --template r1-omni (prompts/r1-omni.txt).

Not a reward term: reasoning_names_answer is a model-free check of what the coherence re-ask asks the
policy to judge (do steps 1-2 name exactly one label, the boxed one?), reported by evaluate.py
(reasoning_coherent_rate) and logged per training step (coherence/model_free).

A reflection answer of None means "reflection switched off" and scores 1 (as in the reference).
When the step text cannot be extracted, coherence_prompt / consistency_prompt return None and
reflection_prompt asks what the reference asks instead: "Answer 'None'" (text) or
"<image>\nAnswer 'None'" (image); the policy's reply is scored like any other answer.

Quirks of the reference kept on purpose so numbers reproduce: no answer normalisation beyond
lower-casing and the strip inside \\boxed{} (so \\boxed{\\text{fear}} and \\boxed{fear.} are wrong);
"I don't know" scores 0 for consistency because it contains "no"; coherence is not stripped.

Pure standard library; nothing is read at import time (templates are read lazily and cached).
"""

import dataclasses
import functools
import math
import pathlib
import re
from typing import Callable

VARIANTS = ("code", "paper", "set", "coherence", "multiplicative", "think", "r1-omni")
# Every score a reward returns, in this order. The trainer logs reward/KEY for each (and for any extra
# key a --reward-fn returns), plots.py draws them, validation reads them: adding a term means adding
# it here and returning it from emor3_reward.
REWARD_KEYS = ("overall", "format", "accuracy", "reflect_text", "reflect_image")
NO_PROMPT_ANSWER = "None"  # the answer the "Answer 'None'" question asks for
NO_STEPS_ASKS = {"text": "Answer 'None'", "image": "<image>\nAnswer 'None'"}  # the reference's question without steps
PROMPT_DIR = pathlib.Path(__file__).resolve().parent / "prompts"
TEMPLATE_NAMES = ("set", "think", "r1-omni", "reflect_text", "reflect_image")
PROMPT_TEMPLATES = ("set", "think", "r1-omni", "none")  # --template choices ("none": the question as it is)

# The reference normalises with re.sub(r"\s*(<|>|/)\s*", r"\1", text) (for "< step1 >" from larger
# Qwen models). That regex is quadratic in whitespace runs (30k spaces take ~6 s) and ~2 s per 10k
# typical responses. Equivalent linear form: split on the delimiters and strip the whitespace that
# touches them ("\s" and str.strip() use the same Unicode whitespace set).
_DELIMITER = re.compile(r"([<>/])")
_BRACE = re.compile(r"[{}]")

# The format regexes of the reference, as ordered literals: fullmatch of
# "<step1>.*</step1>.*<step2>.*...\\boxed\{.*\}.*" (DOTALL) holds iff the text starts with the first
# literal and the rest occur in order without overlap; leftmost search for each is exact and linear,
# where the regex itself backtracks badly on long adversarial strings.
_SET_LITERALS = ("<step1>", "</step1>", "<step2>", "</step2>", "<step3>", "</step3>", "\\boxed{", "}")
_THINK_LITERALS = ("<think>", "</think>", "\\boxed{", "}")


def _as_str(value):
    # rewards must never crash a training step: a non-string response or label scores as empty
    return value if isinstance(value, str) else ""


def normalize_whitespace(text):
    """Remove whitespace around '<', '>' and '/', exactly like the reference's re.sub."""
    parts = _DELIMITER.split(text)  # even entries: text between delimiters; odd: the delimiters
    if len(parts) == 1:
        return text
    parts[0] = parts[0].rstrip()
    parts[-1] = parts[-1].lstrip()
    for k in range(2, len(parts) - 1, 2):
        parts[k] = parts[k].strip()
    return "".join(parts)


def _literals_in_order(text, literals):
    if not text.startswith(literals[0]):
        return False
    pos = len(literals[0])
    for literal in literals[1:]:
        found = text.find(literal, pos)
        if found < 0:
            return False
        pos = found + len(literal)
    return True


def boxed_span(text):
    """(start, end) of the content of the last \\boxed{...} (brace-balanced, not stripped), or None when
    there is none or its braces never close."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    start += len("\\boxed{")
    depth = 0
    for brace in _BRACE.finditer(text, start):
        depth += 1 if brace.group() == "{" else -1
        if depth == -1:  # the "}" that closes \boxed{
            return start, brace.start()
    return None  # braces never close: mathruler gives up rather than take the tail


def extract_boxed(text):
    """Content of the last \\boxed{...}, brace-balanced and stripped; "None" if absent or unclosed.

    Same semantics as mathruler.grader.extract_boxed_content, which the reference uses.
    """
    span = boxed_span(text)
    return text[span[0]:span[1]].strip() if span else "None"


def r1_omni_format(response):
    """re.fullmatch(r"<think>.*?</think>\s*<answer>.*?</answer>", response, re.DOTALL) is not None, in linear
    time (the regex backtracks over every </think> on adversarial text). A match exists iff the text starts
    with <think>, ends with </answer>, and some </think> after the opening tag is followed by whitespace and
    an <answer> that ends before that final </answer> begins; the earliest such <answer> decides."""
    response = _as_str(response)
    if not (response.startswith("<think>") and response.endswith("</answer>")):
        return False
    pos = len("<think>")
    while (close := response.find("</think>", pos)) >= 0:
        after = close + len("</think>")
        while after < len(response) and response[after].isspace():  # \s: the same Unicode whitespace
            after += 1
        if response.startswith("<answer>", after):
            return after + len("<answer>") <= len(response) - len("</answer>")
        pos = close + 1
    return False


def r1_omni_answer(response):
    """R1-Omni's answer: the stripped content of re.search(r"<answer>(.*?)</answer>", response) (no
    DOTALL: the content holds no newline), else the whole stripped response. Linear time."""
    response = _as_str(response)
    close = newline = -1
    pos = 0
    while (start := response.find("<answer>", pos)) >= 0:
        content = start + len("<answer>")
        if close < content:  # the nearest </answer> and newline at or after the content, found once each
            close = response.find("</answer>", content)
            if close < 0:
                break
        if newline < content:
            newline = response.find("\n", content)
            newline = len(response) if newline < 0 else newline  # none left: never look again
        if newline >= close:
            return response[content:close].strip()
        pos = start + 1
    return response.strip()


def _coherence_score(reflect_text, answer):
    if reflect_text is None:  # reflection off
        return 1.0
    reflect_text = _as_str(reflect_text)
    if not reflect_text or reflect_text.lower() == "none":  # model declined: half credit
        return 0.5
    return 1.0 if reflect_text.lower() == answer.lower() else 0.0  # no strip, as in the reference


def _consistency_score(reflect_image):
    if reflect_image is None:
        return 1.0
    reflect_image = _as_str(reflect_image).lower()
    if "yes" in reflect_image:  # checked first: "yes and no" is a yes
        return 1.0
    if "no" in reflect_image:  # substring test, so "I don't know" / "not sure" are a no
        return 0.0
    return 0.5


def emor3_reward(response, answer, reflect_text=None, reflect_image=None, variant="code"):
    """Score one response; returns floats overall, format, accuracy, reflect_text, reflect_image."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown reward variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
    answer = _as_str(answer)
    if variant == "r1-omni":  # no whitespace normalisation, no reflection: R1-Omni's two reward functions
        format_score = 1.0 if r1_omni_format(response) else 0.0
        accuracy = 1.0 if r1_omni_answer(response) == answer.strip() else 0.0
        return dict(zip(REWARD_KEYS, (accuracy + format_score, format_score, accuracy,
                                      _coherence_score(reflect_text, answer), _consistency_score(reflect_image))))
    response = normalize_whitespace(_as_str(response))
    literals = _THINK_LITERALS if variant == "think" else _SET_LITERALS
    format_score = 1.0 if _literals_in_order(response, literals) else 0.0
    accuracy = 1.0 if extract_boxed(response).lower() == answer.lower() else 0.0
    if variant == "paper":  # binary reflection scores; None still means reflection off
        coherence = 1.0 if reflect_text is None or _as_str(reflect_text).lower() == answer.lower() else 0.0
        consistency = 1.0 if reflect_image is None or "yes" in _as_str(reflect_image).lower() else 0.0
    else:  # the graded scores the questions declare
        coherence = REASKS["text"].score(reflect_text, answer)
        consistency = REASKS["image"].score(reflect_image, answer)

    # Weights as in the reference: its (1 - format_weight - 0.1) with format_weight = 0.1 is exactly
    # 0.8 in floating point, and (1 - format_weight) is exactly 0.9, so sums match bit for bit.
    if variant == "code":
        overall = 0.8 * accuracy + 0.1 * (coherence + consistency) + 0.1 * format_score
    elif variant == "paper":
        overall = 0.8 * accuracy + 0.1 * (coherence + consistency) / 2 + 0.1 * format_score
    elif variant == "coherence":
        overall = 0.8 * accuracy + 0.1 * coherence + 0.1 * format_score
    elif variant == "multiplicative":
        overall = 0.9 * accuracy * coherence * consistency + 0.1 * format_score
    else:  # "set" and "think": accuracy + format only
        overall = 0.9 * accuracy + 0.1 * format_score
    return dict(zip(REWARD_KEYS, (overall, format_score, accuracy, coherence, consistency)))


def score_batch(responses, answers, reflect_texts=None, reflect_images=None, variant="code"):
    """emor3_reward over parallel lists; reflect_* = None means reflection off for the whole batch."""
    n = len(responses)
    reflect_texts = [None] * n if reflect_texts is None else reflect_texts
    reflect_images = [None] * n if reflect_images is None else reflect_images
    if not (len(answers) == len(reflect_texts) == len(reflect_images) == n):
        raise ValueError(
            f"score_batch needs lists of equal length: {n} responses, {len(answers)} answers, "
            f"{len(reflect_texts)} reflect_texts, {len(reflect_images)} reflect_images"
        )
    return [
        emor3_reward(r, a, t, i, variant=variant)
        for r, a, t, i in zip(responses, answers, reflect_texts, reflect_images)
    ]


# --- prompts -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def load_template(name):
    """Template text of prompts/<name>.txt (the file's single trailing newline is not part of it)."""
    if name not in TEMPLATE_NAMES:
        raise ValueError(f"unknown prompt template {name!r}; valid names: {', '.join(TEMPLATE_NAMES)}")
    text = (PROMPT_DIR / f"{name}.txt").read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text


def variant_for_template(template):
    """The reward variant whose format rule a response to `template` follows (for format rates)."""
    return template if template in ("think", "r1-omni") else "code"


def render_template(name, content):
    """The SET / think / R1-Omni prompt around a dataset question, as EasyR1 renders it with jinja:
    Template(file.strip()).render(content=problem) with "{{ content | trim }}"."""
    return load_template(name).strip().replace("{content}", content.strip())


def load_labels(path_or_name):
    """Label list: "emoset" / "emotion6" (bundled), or a text file with one label per line."""
    if path_or_name in ("emoset", "emotion6"):
        path = PROMPT_DIR / "labels" / f"{path_or_name}.txt"
    else:
        path = pathlib.Path(path_or_name)
    if not path.is_file():
        raise FileNotFoundError(
            f"label file {str(path)!r} not found; pass 'emoset', 'emotion6' or a text file with one label per line"
        )
    labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not labels:
        raise ValueError(f"label file {str(path)!r} has no labels (expected one label per line)")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"label file {str(path)!r} lists these labels more than once: {', '.join(duplicates)}")
    return labels


def _step_text(response, end_literal, include_end):
    # Same as the reference's re.search(r"(<step1>.*?</step2>)") / r"(<step1>.*?)(?=<step2>)" (DOTALL),
    # on the raw response (the reference does not normalise whitespace here). The first <step1> is the
    # match start; if no end marker follows it, none follows any later <step1> either. str.find keeps it
    # linear where the regex is quadratic on many <step1> tags.
    response = _as_str(response)
    start = response.find("<step1>")
    if start < 0:
        return ""
    end = response.find(end_literal, start + len("<step1>"))
    if end < 0:
        return ""
    return response[start:end + len(end_literal) if include_end else end].strip()


def reflection_parts(kind, response, labels=None):
    """The re-ask's question about `response` in three parts, (before, step text, after), or None when
    the steps are missing. kind "text": the coherence question over <step1>..</step2> (text only);
    kind "image": the consistency question over <step1> up to <step2>, beginning with "<image>\n" where
    the image goes. The step text is the part a too-long re-ask may shorten (rollout.plain_turn_requests)."""
    if kind == "text":
        if isinstance(labels, str):  # ", ".join("fear") would silently give "f, e, a, r"
            raise TypeError("labels must be a list of label strings, e.g. load_labels('emoset')")
        steps = _step_text(response, "</step2>", include_end=True)
        # {labels} first, so a response that happens to contain "{labels}" is left as it is
        template = load_template("reflect_text").replace("{labels}", ", ".join(labels))
    else:
        steps = _step_text(response, "<step2>", include_end=False)
        template = load_template("reflect_image")
    if not steps:
        return None
    before, after = template.split("{response}", 1)  # each template has one {response}
    return before, steps, after


def coherence_prompt(response, labels):
    """Text-only reflection prompt over <step1>..</step2>, or None when the steps are missing."""
    parts = reflection_parts("text", response, labels)
    return "".join(parts) if parts else None


def consistency_prompt(response):
    """Image + text reflection prompt over <step1> up to <step2>, or None when missing.
    It begins with "<image>\n"; the caller puts the image there."""
    parts = reflection_parts("image", response)
    return "".join(parts) if parts else None


def reflection_question(kind, response, labels):
    """The re-ask's question about `response` as reflection_parts' three parts; without extractable
    steps, the reference's "Answer 'None'" question of that kind, with nothing to shorten."""
    return reflection_parts(kind, response, labels) or (NO_STEPS_ASKS[kind], "", "")


# --- the re-ask questions ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reask:
    """One question the policy is asked about its own response (the Reflective Emotional Reward).

    flag          the trainer's on/off Config field (--reflect-text, --reflect-image)
    shows_visual  the question is shown with the rollout's image, or for a video prompt its clip
    question      (response, labels) -> (before, step text, after); the step text is the part a prompt
                  too long for the engine loses the end of (rollout.plain_turn_requests)
    score         (answer, label) -> float; answer None means "not asked" (reflection off)
    """
    flag: str
    shows_visual: bool
    question: Callable
    score: Callable


def _image_question(response, labels):
    before, steps, after = reflection_question("image", response, labels)
    return before.removeprefix("<image>"), steps, after  # the request's visual slot is the image


# name -> question, in the order they are asked (a question's place, from 1, also picks its sampling seed:
# common.seed_for). A rollout's answers are reflections[name]; load_reward's default passes each one to
# emor3_reward as reflect_NAME. Adding a question: an entry here, its template in prompts/, its term in
# emor3_reward (and REWARD_KEYS), and the on/off field `flag` in the trainer's Config (README, "Your data").
REASKS = {
    "text": Reask("reflect_text", False, lambda response, labels: reflection_question("text", response, labels),
                  lambda answer, label: _coherence_score(answer, label)),
    "image": Reask("reflect_image", True, _image_question, lambda answer, label: _consistency_score(answer)),
}


def reasks_on(config):
    """The names of the re-ask questions a run asks: those whose on/off field (`flag`) is set in its config."""
    return [name for name, question in REASKS.items() if getattr(config, question.flag)]


def reflection_prompt(kind, response, labels):
    """The re-ask's question about `response`: kind "text" (coherence, text only) or "image"
    (consistency, beginning with "<image>\n" where the image goes); without extractable steps, the
    reference's "Answer 'None'" question of that kind."""
    return "".join(reflection_question(kind, response, labels))


def reasoning_names_answer(response, labels):
    """Model-free coherence: 1.0 when the response's step 1-2 text names exactly one label and that
    label is its \\boxed{} answer, else 0.0. No model and no reward term: a check, on any dataset, of
    what the self-judged coherence re-ask (prompts/reflect_text.txt) asks the policy to judge.

    - Step text: exactly what the coherence re-ask shows the policy, from the first <step1> through the
      first </step2> after it, on the raw response (_step_text). Without it (no <step1>, no </step2>
      after it, or "< step1 >" that only the reward's normalisation would repair): 0.0.
    - A label is named when it occurs as a whole word (or whole phrase), case-insensitively: not
      preceded or followed by a letter, digit or underscore. So "sad" is not named by "sadness" or
      "saddened"; a hyphen or apostrophe ends a word, so "awe-inspiring" and "fear's" name awe and fear.
      Spaces inside a multi-word label match any run of whitespace. Mentions are read left to right,
      the longest label first where several start at one place: "positive surprise" names that label
      only, not also "surprise", and a hyphenated label "light-hearted" is not also "light".
    - Counting is lexical: each distinct label counts once however often it occurs, and a negated
      mention ("not sad") still names the label.
    - The answer is the reward's: the last \\boxed{} of the whitespace-normalised response
      (extract_boxed), compared with the named label lower-cased, without further normalisation.
    """
    if isinstance(labels, str):  # a string would be read as a list of one-letter labels
        raise TypeError("labels must be a list of label strings, e.g. load_labels('emoset')")
    steps = _step_text(response, "</step2>", include_end=True).lower()
    # lower-cased label with its spaces collapsed (as matched) -> the label lower-cased (as compared with
    # the box); blank labels dropped, as an empty pattern would match everywhere
    wanted = {" ".join(label.lower().split()): label.strip().lower() for label in labels if _as_str(label).strip()}
    if not steps or not wanted:
        return 0.0
    alternatives = sorted(wanted, key=len, reverse=True)  # longest first: Python tries alternatives in order
    pattern = r"(?<!\w)(?:" + "|".join(r"\s+".join(map(re.escape, a.split())) for a in alternatives) + r")(?!\w)"
    named = {wanted[" ".join(m.group().split())] for m in re.finditer(pattern, steps)}
    answer = extract_boxed(normalize_whitespace(_as_str(response))).lower()
    return 1.0 if len(named) == 1 and answer in named else 0.0


def load_reward(variant="code", reward_fn=""):
    """The reward as score(response, answer, reflections, index=None), where reflections maps a re-ask
    question's name (REASKS) to the policy's answer: emor3_reward(variant=variant), or a user function
    from `reward_fn` = "path.py:function".

    A user function is called as fn(response, answer, reflect_text, reflect_image) and returns a float
    or a dict with at least "overall": REWARD_KEYS it lacks are logged as 0, and keys of its
    own are logged too (reward/KEY). A missing "overall", a value that is not a finite number, or an
    exception stops the run, naming the function, the response index and the answer. Loading it
    executes the file, like any Python import: only point it at code you trust.
    """
    if not reward_fn:  # reflections: {question name: answer}, a missing question not asked
        return lambda response, answer, reflections, index=None: emor3_reward(
            response, answer, **{f"reflect_{name}": a for name, a in reflections.items()}, variant=variant)
    import importlib.util
    path, _, name = reward_fn.rpartition(":")
    if not path or not pathlib.Path(path).is_file():
        raise SystemExit(f"--reward-fn {reward_fn!r}: expected an existing path.py:function")
    spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, name, None)):
        raise SystemExit(f"--reward-fn {reward_fn!r}: {path} has no function {name!r}")
    user_fn = getattr(module, name)

    def score(response, answer, reflections, index=None):
        # a reward that fails quietly (no "overall" scored 0) trains nothing and tells nobody: fail loudly
        where = f"--reward-fn {reward_fn}, response {index} (answer {answer!r})"
        try:
            result = user_fn(response, answer, reflections.get("text"), reflections.get("image"))
        except Exception as e:
            raise SystemExit(f"{where}: the function raised {type(e).__name__}: {e}") from e
        result = result if isinstance(result, dict) else {"overall": result}
        if "overall" not in result:
            raise SystemExit(f"{where}: its result {result!r} has no 'overall'")
        bad = {k: v for k, v in result.items() if isinstance(v, bool) or not isinstance(v, (int, float))}
        if bad:
            raise SystemExit(f"{where}: not numbers: {bad!r}")
        bad = {k: v for k, v in result.items() if not math.isfinite(v)}
        if bad:  # a NaN or inf reward makes every advantage of its group NaN: the update would be lost
            raise SystemExit(f"{where}: not finite: {bad!r}")
        return {**dict.fromkeys(REWARD_KEYS, 0.0), **{k: float(v) for k, v in result.items()}}
    return score
