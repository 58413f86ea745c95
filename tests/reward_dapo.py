"""Rewards whose group means the DAPO test chooses (tests/test_train.py): they depend on the label only,
so every response to a prompt gets the same score and a group's mean is known in advance."""

MEANS = {"anger": 1.0, "sadness": 0.0, "amusement": 0.5, "contentment": 0.5}  # kept: only the 0.5 groups


def by_label(response, answer, reflect_text, reflect_image):
    return {"overall": MEANS[answer], "accuracy": MEANS[answer]}


def always_right(response, answer, reflect_text, reflect_image):
    return 1.0  # every group's mean is 1: none is strictly inside (0.01, 0.99)
