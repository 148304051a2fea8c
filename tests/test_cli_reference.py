from pathlib import Path

from osae.cli_reference import reference


def test_docs_cli_md_is_the_generated_reference():
    committed = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    assert committed == reference(), "regenerate it: python -m osae.cli_reference > docs/cli.md"
