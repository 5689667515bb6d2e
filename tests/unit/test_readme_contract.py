"""The README is the contract: its policy examples parse, and the repository's policy.yaml too."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.policy import load_policies, parse_policies

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
POLICY_SECTION = README[README.index("## Policy file") : README.index("## Receiver API")]
EXAMPLES = re.findall(r"```yaml\n(.*?)```", POLICY_SECTION, flags=re.DOTALL)


def test_the_policy_section_has_its_examples() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_policy_example_in_the_readme_parses(example: str) -> None:
    policies = parse_policies(example, source="README.md")
    assert policies.policies and all(p.rules for p in policies.policies)


def test_the_repository_policy_file_parses() -> None:
    assert load_policies(ROOT / "policy.yaml").policies[0].name == "production-quality"
