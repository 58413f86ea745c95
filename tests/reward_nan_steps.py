"""A reward that is NaN on every step but step 2, for tests/test_resume.py (used via --reward-fn).

The trainer scores each rank's 16 responses once per step (8 prompts x 4 over 2 ranks, no
validation), so this process's call count tells the step.
"""

calls = 0


def reward(response, answer, reflect_text, reflect_image):
    global calls
    step = calls // 16 + 1
    calls += 1
    return 0.5 if step == 2 else float("nan")
