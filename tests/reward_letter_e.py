"""A simple learnable reward for tests/test_train.py::test_loop_learns (used via --reward-fn)."""


def reward(response, answer, reflect_text, reflect_image):
    return response.count("e") / max(len(response), 1)
