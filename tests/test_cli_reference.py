from pathlib import Path

from osae.cli_reference import reference


def test_docs_cli_md_is_the_generated_reference():
    committed = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    assert committed == reference(), "regenerate it: python -m osae.cli_reference > docs/cli.md"


def test_docs_fit_md_has_the_generated_settings_table():
    from osae.cli_reference import TABLE_BEGIN, with_settings_table

    committed = (Path(__file__).parents[1] / "docs" / "fit.md").read_text()
    assert TABLE_BEGIN in committed and "`--prefix-law`" in committed
    assert committed == with_settings_table(committed), (
        "regenerate it: python -m osae.cli_reference --fit-md docs/fit.md"
    )
