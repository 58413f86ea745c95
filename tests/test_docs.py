"""The docs do not rot: what README.md, docs/*.md and the code's comments point at still exists.

Four checks, each a function of the repository root that returns a list of problems (empty = fine):
  (a) check_section_refs: every `README, "SECTION"` (also README.md, METHOD.md, BENCHMARKS.md,
      docs/NAME.md; `FILE ("SECTION"`, `FILE's "SECTION"` and `... and "SECTION"` too) in the tracked
      *.py, *.md, *.sh and *.txt files names a heading of that file, equal to it or its start. Comment
      markers at line starts are blanked first, so a reference broken over two comment lines counts.
  (b) check_links: every relative link and image in README.md and docs/*.md reaches a file or folder,
      and its #anchor (same file or another .md) one of the target's headings, by GitHub's slug rule.
  (c) check_command_flags: every command in README.md and docs/*.md code (fenced blocks, inline spans)
      that runs one of our scripts (python/torchrun/bash X, or `X.py --flag` written bare) names a
      script that exists, and each --flag after the script name is in that script's --help usage
      (a shell script's flags: `X.sh --flag` in its --help; demo.sh passes the rest to train_grpo.py).
  (d) check_ci_command: the command .ci/run runs is a line of a fenced block of README.md.
Not checked: headings inside HTML, links written as HTML or as reference links ([text][id]), inline
spans broken over a line, whether a flag's value is valid, flags placed before a subcommand of its own
(they are checked against the union of both --help's), and BENCHMARKS.md's commands (a dated log).
Each check also runs on a copy of the tree with a break planted, which proves it can fail.
"""

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
SELF = "tests/test_docs.py"  # holds example references of every kind, so (a) skips it
DOC = r"(README(?:\.md)?|METHOD(?:\.md)?|BENCHMARKS(?:\.md)?|docs/[\w.-]+\.md)"
SECTION_REF = re.compile(r"(?<![\w/.-])" + DOC + r"""(?:,\s*|\s*\(\s*|'s\s+)"([^"]{1,200})\"""")
MORE_SECTIONS = re.compile(r'\s*,?\s*(?:and|or)\s+"([^"]{1,200})"')  # METHOD.md, "A" and "B"
SUBCOMMANDS = {"data.py": {"check"}, "tiny.py": {"demo", "video-demo"}}  # subparsers: own --help
PASSES_ON = {"demo.sh": "train_grpo.py", "demo_video.sh": "train_grpo.py"}  # "other arguments go to"
HELP_CACHE = {}  # (script, its sha256, subcommand) -> (--help output, error): one run a session, copies too


def repo_files(root, suffixes):
    """Relative names of the tracked and untracked-but-not-ignored files (a copy without .git: all)."""
    if (root / ".git").exists():
        listing = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                                 cwd=root, capture_output=True, text=True, check=True).stdout.split("\n")
    else:
        listing = [str(p.relative_to(root)) for p in root.rglob("*")]
    return sorted({n for n in listing if n.endswith(suffixes) and (root / n).is_file()})


def doc_pages(root):
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]


def markdown_parts(text):
    """Prose lines outside fenced code as (line number, line), and each fenced block as (first line, text)."""
    prose, blocks, block = [], [], None
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith(("```", "~~~")):
            if block is None:
                block = (number + 1, [])
            else:
                blocks.append((block[0], "\n".join(block[1])))
                block = None
        elif block is not None:
            block[1].append(line)
        else:
            prose.append((number, line))
    return prose, blocks


def headings(path):
    """Markdown headings' text (after the hashes, stripped, backticks dropped), skipping fenced code."""
    prose, _ = markdown_parts(path.read_text())
    return [m.group(1).strip().replace("`", "") for _, line in prose if (m := re.match(r"#+\s+(.*)", line))]


def github_slugs(path):
    """Anchors GitHub gives the headings: lowercase, punctuation but - and _ dropped, each space a -,
    repeats numbered -1, -2, ...; a link inside a heading counts as its text."""
    slugs, seen = set(), {}
    for heading in headings(path):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        slugs.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return slugs


def check_section_refs(root):
    problems = []
    for name in repo_files(root, (".py", ".md", ".sh", ".txt")):
        if name == SELF:
            continue
        text = (root / name).read_text(errors="replace")
        text = re.sub(r"(?m)^([ \t]*)(#+)", lambda m: m.group(1) + " " * len(m.group(2)), text)  # same offsets
        for m in SECTION_REF.finditer(text):
            sections, end = [m.group(2)], m.end()
            while more := MORE_SECTIONS.match(text, end):
                sections.append(more.group(1))
                end = more.end()
            doc = m.group(1) if m.group(1).endswith(".md") else m.group(1) + ".md"
            where = f"{name}:{text.count(chr(10), 0, m.start()) + 1}"
            if not (root / doc).is_file():
                problems.append(f'{where}: {m.group(1)}, "{sections[0]}": {doc} does not exist')
                continue
            known = headings(root / doc)
            for section in (" ".join(s.split()).replace("`", "") for s in sections):
                if section != "..." and not section.startswith("<") and not any(
                        h.startswith(section) for h in known):
                    problems.append(f'{where}: {m.group(1)}, "{section}": no heading of {doc} starts so')
    return problems


def check_links(root):
    problems = []
    for page in doc_pages(root):
        prose, _ = markdown_parts(page.read_text())
        for number, line in prose:
            for target in re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)",
                                     re.sub(r"`[^`]*`", "", line)):
                if re.match(r"[a-zA-Z][\w+.-]*:", target):  # http:, https:, mailto:
                    continue
                where = f"{page.relative_to(root)}:{number}: ({target})"
                path, _, anchor = target.partition("#")
                dest = page if not path else (root / unquote(path).lstrip("/") if path.startswith("/")
                                              else page.parent / unquote(path))
                if not dest.exists():
                    problems.append(f"{where}: {os.path.relpath(dest, root)} does not exist")
                elif anchor and dest.suffix == ".md" and unquote(anchor).lower() not in github_slugs(dest):
                    problems.append(f"{where}: no heading of {dest.name} has the anchor #{anchor}")
    return problems


def command_lines(text, first_line):
    """(line number, line) of shell text: backslash-continued lines joined, # comments cut."""
    pending, start = "", first_line
    for number, line in enumerate(text.splitlines(), first_line):
        start = start if pending else number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, re.split(r"(?:^|\s)#", pending + line, maxsplit=1)[0].strip()
        pending = ""


def script_call(command):
    """(script, arguments after it) if the command runs a .py or .sh file, else None."""
    try:
        words = shlex.split(command)
    except ValueError:  # an unclosed quote in prose: plain words will do
        words = command.split()
    while words and re.match(r"\w+=", words[0]):  # OUT=/tmp/x bash demo.sh
        words.pop(0)
    if not words:
        return None
    runner = Path(words[0]).name
    if words[0].endswith((".py", ".sh")):  # `train_grpo.py --demo`, written bare: a command only with a flag
        return (words[0], words[1:]) if words[1:2] and words[1].startswith("--") else None
    if re.fullmatch(r"python[\d.]*", runner) and words[1:2] == ["-m"]:
        if words[2:3] not in (["torch.distributed.run"], ["torch.distributed.launch"]):
            return None  # python -m pytest ...
        runner = "torchrun"
    if not re.fullmatch(r"python[\d.]*|torchrun|bash|sh", runner):
        return None
    suffix = ".sh" if runner in ("bash", "sh") else ".py"
    for i, word in enumerate(words[1:], 1):
        if word.endswith(suffix):
            return word, words[i + 1:]
        if runner != "torchrun" and not word.startswith("-"):
            return None  # python -c "...", bash -c "..."
    return None


def help_text(root, script, sub):
    """The script's --help output, or None with the reason; each (script, content) runs once."""
    path = root / script
    source = path.read_text()
    key = (script, hashlib.sha256(source.encode()).hexdigest(), sub)
    if key not in HELP_CACHE:
        parses_help = re.search(r'"--help"|--help\)' if script.endswith(".sh") else "argparse|parse_flags", source)
        if not parses_help:  # setup_cpu.sh --help would build .venv
            HELP_CACHE[key] = (None, "it parses no --help, so `--help` would run it")
        else:
            argv = ["bash", script] if script.endswith(".sh") else [sys.executable, script, *([sub] if sub else [])]
            done = subprocess.run([*argv, "--help"], cwd=root, capture_output=True, text=True, timeout=300,
                                  env={**os.environ, "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"})
            HELP_CACHE[key] = (done.stdout, None) if done.returncode == 0 else (None, done.stderr[-500:])
    return HELP_CACHE[key]


def help_flags(script, text):
    if script.endswith(".sh"):  # free text: its own flags are the ones written right after its name
        return set(re.findall(re.escape(Path(script).name) + r"\s+(--[\w-]+)", text))
    # argparse's usage block; --help itself is always there (it printed this)
    return set(re.findall(r"--[\w-]+", text.split("\n\n", 1)[0])) | {"--help"}


def check_command_flags(root):
    calls, problems = [], []  # calls: (where, script, subcommand or None, flags after the script)
    for page in doc_pages(root):
        prose, blocks = markdown_parts(page.read_text())
        spans = [(n, span) for n, line in prose for span in re.findall(r"`([^`]+)`", line)]
        for first, text in blocks + spans:
            for number, line in command_lines(text, first):
                for command in re.split(r"&&|\|\|?|;", line):
                    if not (call := script_call(command.strip())):
                        continue
                    script, args = os.path.normpath(call[0]), [a.strip("[]") for a in call[1]]
                    where = f"{page.relative_to(root)}:{number}: `{command.strip()}`"
                    if not (root / script).is_file():
                        problems.append(f"{where}: {script} does not exist")
                        continue
                    sub = next((a for a in args if a in SUBCOMMANDS.get(script, ())), None)
                    flags = [a.split("=")[0] for a in args if a.startswith("--") and len(a) > 2]
                    calls.append((where, script, sub, tuple(flags)))
    # Whose --help each call needs: its script's (and its subcommand's), and train_grpo.py's for demo.sh.
    helps_of = {call: {(call[1], call[2]), (call[1], None), (PASSES_ON.get(call[1]), None)} - {(None, None)}
                for call in calls if call[3]}
    needed = list(set().union(*helps_of.values()))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # ~2 s each: importing torch
        helps = dict(zip(needed, pool.map(lambda key: help_text(root, *key), needed)))
    for (where, script, _, flags), keys in helps_of.items():
        accepted, failed = set(), False
        for key in sorted(keys, key=str):
            text, error = helps[key]
            if error:
                problems.append(f"{where}: cannot read the flags of `{' '.join(filter(None, key))}`: {error}")
            failed, accepted = failed or bool(error), accepted | help_flags(key[0], text or "")
        problems += [f"{where}: {flag} is not in {script}'s --help" for flag in flags
                     if not failed and flag not in accepted]
    return problems


def check_ci_command(root):
    ci_lines = [line.strip() for line in (root / ".ci/run").read_text().splitlines()]
    command = [line for line in ci_lines if line and not line.startswith("#")][-1]
    _, blocks = markdown_parts((root / "README.md").read_text())
    if any(line == command for first, text in blocks for _, line in command_lines(text, first)):
        return []
    return [f"README.md: no fenced code block has .ci/run's command as a line: {command}"]


CHECKS = [check_section_refs, check_links, check_command_flags, check_ci_command]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_docs_are_consistent(check):
    """The docs send a reader to a missing section, file, anchor or flag, or CI runs other tests."""
    problems = check(REPO)
    assert problems == [], f"{check.__name__}: {len(problems)} problem(s):\n" + "\n".join(problems)


@pytest.fixture
def tree(tmp_path):
    """The repository's files (tracked and untracked, not ignored), copied: a tree to plant breaks in."""
    for name in repo_files(REPO, ""):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    return tmp_path


def plant(path, text):
    path.write_text((path.read_text() if path.exists() else "") + text)


def new_problems(check, root, before):
    """The problems check finds in root that were not in before: the planted ones, whatever the docs'
    state when the test runs (appending and renaming in place keep earlier line numbers)."""
    return "\n".join(p for p in check(root) if p not in before)


def test_section_refs_catch_a_renamed_heading(tree):
    """check_section_refs would miss a renamed heading or a reference broken over two comment lines."""
    before, method = check_section_refs(tree), tree / "METHOD.md"
    method.write_text(method.read_text().replace("\n## Reward\n", "\n## Scoring\n"))
    plant(tree / "planted.py", '# (README,\n#  "No such section") and METHOD.md, "GRPO" and "Nor this"\n')
    problems = new_problems(check_section_refs, tree, before)
    assert 'rewards.py:4: METHOD.md, "Reward"' in problems, problems
    assert 'planted.py:1: README, "No such section"' in problems, problems
    assert 'planted.py:2: METHOD.md, "Nor this"' in problems and '"GRPO"' not in problems, problems


def test_links_catch_a_missing_file_and_anchor(tree):
    """check_links would miss a link to a deleted file or to a heading that was renamed."""
    before = check_links(tree)
    plant(tree / "README.md", "\nSee [gone](docs/missing.md) and ![](docs/demo-ablation.png).\n")
    plant(tree / "docs/planted.md", "# A heading, with `code`!\n\n[ok](#a-heading-with-code) "
          "[bad](#a-heading) [up](../README.md#no-such-heading) [page](https://example.com/x)\n")
    problems = new_problems(check_links, tree, before)
    assert "README.md" in problems and "docs/missing.md does not exist" in problems, problems
    assert "(#a-heading): no heading" in problems and "#no-such-heading" in problems, problems
    assert "demo-ablation.png" not in problems and "#a-heading-with-code" not in problems, problems


def test_command_flags_catch_a_misspelt_flag(tree):
    """check_command_flags would miss a flag a script no longer takes, or a script that is gone."""
    before = check_command_flags(tree)
    plant(tree / "README.md", "\n```bash\ntorchrun --nproc_per_node 8 train_grpo.py --train-filez x \\\n"
          "    --max-steps 3   # --not-a-command\nOUT=/tmp/o bash demo.sh --ablation --kl-coef 0.1 --no-such-flag\n"
          "python missing_script.py --x && python tiny.py --seed 1 demo --num-train 8\n```\n"
          "Then `python merge.py RUN --outt X` and `sft.py --judge-swapp 1`.\n")
    problems = new_problems(check_command_flags, tree, before)
    for wanted in ["--train-filez is not in train_grpo.py", "--no-such-flag is not in demo.sh",
                   "missing_script.py does not exist", "--outt is not in merge.py", "--judge-swapp is not"]:
        assert wanted in problems, f"{wanted!r} not reported:\n{problems}"
    for fine in ["--max-steps", "--not-a-command", "--ablation", "--kl-coef", "--nproc", "--num-train"]:
        assert f"{fine} is not" not in problems, problems


def test_ci_command_catches_a_changed_test_command(tree):
    """check_ci_command would miss CI running other tests than the README tells people to run."""
    ci = tree / ".ci/run"
    ci.write_text(ci.read_text().rstrip("\n") + " -x\n")
    assert check_ci_command(tree) == [f"README.md: no fenced code block has .ci/run's command as a line: "
                                      f"{ci.read_text().splitlines()[-1]}"]
