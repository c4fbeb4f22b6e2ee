"""The README agrees with the code where it quotes it: the flag table, the file table, the demo command."""

import dataclasses
import re
from pathlib import Path

import sqlm

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_flag_table_matches_config():
    """Every Config field is in the flag table with its default, so the table and --help cannot drift."""
    table = README.split("### Flags", 1)[1].split("###", 1)[0]
    rows = {line.split("|")[1].strip(" `"): line.split("|")[2].strip() for line in table.splitlines()
            if line.startswith("| `--")}
    for field in dataclasses.fields(sqlm.Config):
        flag = "--" + field.name.replace("_", "-")
        default = field.default
        expected = ("on" if default else "off") if isinstance(default, bool) else str(default)
        expected = '""' if default == "" else expected
        assert rows.get(flag) == expected, (flag, rows.get(flag), expected)
    assert len(rows) == len(dataclasses.fields(sqlm.Config))


def test_file_table_names_every_python_file():
    for path in sorted(ROOT.glob("*.py")):
        assert f"| `{path.name}` |" in README, path.name


def test_walkthrough_steps_are_sqlm_section_headers():
    """The README's numbered steps and sqlm.py's section headers are one numbering: step K of the walkthrough
    names a function that sqlm.py defines under its header K, so "step 5" means one thing in both."""
    walkthrough = README.split("## The algorithm, one step (sqlm.py)", 1)[1].split("\n## ", 1)[0]
    steps = {int(number): function for number, function in
             re.findall(r"^(\d+)\. \*\*[^*]+\*\* \(`(\w+)`", walkthrough, flags=re.MULTILINE)}
    source = (ROOT / "sqlm.py").read_text()
    headers = list(re.finditer(r"^# =+ (\d+)\. (.+)$", source, flags=re.MULTILINE))
    assert [int(h.group(1)) for h in headers] == sorted(steps) == list(range(1, 11))
    for header, following in zip(headers, headers[1:] + [None]):
        section = source[header.end():following.start() if following else len(source)]
        assert f"\ndef {steps[int(header.group(1))]}(" in section, (header.group(0), steps[int(header.group(1))])
    assert "def train_step(" in source and "train_step(config" in source.split("def main(", 1)[1]
