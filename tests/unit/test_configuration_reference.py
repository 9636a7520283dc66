"""docs/configuration.md is generated from the declarations (tasks/config/fields.py) and kept current."""

from pathlib import Path

from tasks.config import reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_reference_in_docs_is_the_one_the_declarations_generate():
    assert DOC.read_text() == reference.markdown(), (
        "docs/configuration.md is stale — fix: python -m tasks.config.reference > docs/configuration.md")


def test_every_declared_setting_is_in_the_reference_once():
    text = reference.markdown()
    for field in reference.FIELDS:
        assert text.count(f"### `{field.name}`\n") == 1
