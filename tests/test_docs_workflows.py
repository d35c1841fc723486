"""The YAML examples in README.md and docs/*.md parse, and their workflows resist script injection.

Every fenced block marked ```yaml or ```yml must parse with yaml.safe_load, with no
exception: a block that is not YAML should not be marked so, and the docs hold no
fragment that is YAML only in part. A block whose top level has `jobs` is a GitHub
Actions workflow; each of its steps' `run:` scripts must hold no `${{ … }}` at all.
GitHub pastes an expression's text into the script before the shell reads it, and
payload values (`github.event.client_payload.*`, `inputs.*`, `github.event.inputs.*`)
are chosen by whoever can push to the source repository, so the examples pass them
through `env:` and quote them; being stricter than "no payload expression" keeps the
rule one a reader can check at a glance. In YAML, `on:` parses as the key True.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE_OPEN = re.compile(r"^(?P<indent> *)```(?P<lang>yaml|yml)\s*$")
_FENCE_CLOSE = re.compile(r"^ *```\s*$")
_PAYLOAD = re.compile(r"client_payload|\binputs\b")


@dataclass(frozen=True)
class Block:
    """A fenced YAML block: where it is, and its text with the fence's indentation removed."""

    path: str
    line: int  # 1-based line of the opening fence
    text: str


def yaml_blocks(path: Path) -> list[Block]:
    """Every ```yaml / ```yml block in a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    name = str(path.relative_to(ROOT))
    blocks, i = [], 0
    while i < len(lines):
        opening = _FENCE_OPEN.match(lines[i])
        if not opening:
            i += 1
            continue
        indent = len(opening["indent"])
        body, j = [], i + 1
        while j < len(lines) and not _FENCE_CLOSE.match(lines[j]):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        if j == len(lines):
            raise AssertionError(f"{name}:{i + 1}: yaml block is never closed")
        blocks.append(Block(name, i + 1, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def workflow_problems(block: Block) -> list[str]:
    """What is wrong with a block: unparsable YAML, or a workflow step whose run: holds ${{ … }}."""
    where = f"{block.path}:{block.line}"
    try:
        document = yaml.safe_load(block.text)
    except yaml.YAMLError as exc:
        return [f"{where}: yaml block does not parse: {exc}"]
    if not (isinstance(document, dict) and "jobs" in document):
        return []
    problems = []
    if "on" not in document and True not in document:
        problems.append(f"{where}: workflow has no `on:` trigger")
    jobs = document["jobs"]
    if not isinstance(jobs, dict) or not jobs:
        return [*problems, f"{where}: workflow `jobs` must be a non-empty mapping"]
    for job_id, job in jobs.items():
        steps = job.get("steps") if isinstance(job, dict) else None
        if not isinstance(steps, list):
            problems.append(f"{where}: job {job_id!r} has no list of steps")
            continue
        for number, step in enumerate(steps, 1):
            if not isinstance(step, dict) or ("run" in step) == ("uses" in step):
                problems.append(f"{where}: job {job_id!r} step {number} needs exactly one of run: or uses:")
                continue
            script = step.get("run")
            if script is None:
                continue
            for script_line in str(script).splitlines():
                if "${{" in script_line:
                    kind = "a payload value" if _PAYLOAD.search(script_line) else "an expression"
                    problems.append(
                        f"{where}: job {job_id!r} step {number}: run: interpolates {kind} with ${{{{ }}}}"
                        f" (pass it through env: and quote it): {script_line.strip()}"
                    )
    return problems


ALL_BLOCKS = [block for path in DOCS for block in yaml_blocks(path)]


def test_docs_hold_the_workflow_examples():
    workflows = [b for b in ALL_BLOCKS if "jobs:" in b.text]

    assert {b.path for b in workflows} >= {"README.md", "docs/setup.md"}, workflows


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: f"{b.path}:{b.line}")
def test_yaml_block_parses_and_passes_payload_through_env(block):
    assert workflow_problems(block) == []


def test_checker_reports_payload_interpolated_into_run():
    bad = Block("example.md", 7, """\
on:
  repository_dispatch:
    types: [QUAY_BUILD_SUCCESS]
jobs:
  deploy:
    runs-on: ubuntu-latest
    steps:
      - run: echo "${{ github.event.client_payload.branch }}"
""")

    problems = workflow_problems(bad)

    assert len(problems) == 1
    assert problems[0].startswith("example.md:7: job 'deploy' step 1: run: interpolates a payload value")
    assert problems[0].endswith('echo "${{ github.event.client_payload.branch }}"')


def test_checker_reports_inputs_in_a_multi_line_script_and_accepts_env():
    block = Block("example.md", 1, """\
on: workflow_dispatch
jobs:
  deploy:
    runs-on: ubuntu-latest
    steps:
      - env:
          IMAGE: ${{ inputs.image }}
        run: echo "image=$IMAGE"
      - run: |
          echo ok
          deploy ${{ github.event.inputs.image }}
""")

    problems = workflow_problems(block)

    assert problems == [
        "example.md:1: job 'deploy' step 2: run: interpolates a payload value with ${{ }}"
        " (pass it through env: and quote it): deploy ${{ github.event.inputs.image }}"
    ]


def test_checker_reports_a_block_that_does_not_parse():
    problems = workflow_problems(Block("example.md", 3, "jobs: [unclosed\n"))

    assert len(problems) == 1 and problems[0].startswith("example.md:3: yaml block does not parse")
