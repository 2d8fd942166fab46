"""README is the guide a newcomer reads first; the rest lives in docs/ and is reachable from it."""

from __future__ import annotations

import re

from conftest import ROOT

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_fits_two_screens_and_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 250
    first_block = text.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block


def test_every_doc_is_linked_from_readme_and_every_relative_link_resolves():
    readme = (ROOT / "README.md").read_text()
    linked = {m for m in LINK.findall(readme)}
    for doc in (ROOT / "docs").glob("*.md"):
        assert f"docs/{doc.name}" in linked, f"docs/{doc.name} is not linked from README.md"
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            assert (page.parent / target).exists(), f"{page.name}: link {target} leads nowhere"


def test_config_reference_is_generated_from_the_schema():
    """docs/config-reference.md is the schema rendered (python -m lmdelta config-reference): a key
    added to the schema is documented by regenerating it, and this test says when someone forgot."""
    from lmdelta.config import load_schema, schema_reference

    text = (ROOT / "docs" / "config-reference.md").read_text()
    assert text == schema_reference(), "regenerate: python -m lmdelta config-reference --out docs/config-reference.md"
    assert all(f"`{key}`" in text for key in load_schema()["properties"])
