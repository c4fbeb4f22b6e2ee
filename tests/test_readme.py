"""The README agrees with the code where it quotes it: the flag table, the file table, the demo command."""

import dataclasses
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
