"""MkDocs hooks of the documentation site: Sphinx roles in docstrings, and the tutorial page.

**The tutorial.** ``docs/tutorial/fashion_mnist.py`` is a Jupytext percent-format script (the
source of truth, executed by ``tests/test_docs.py``). :func:`on_files` converts it to Markdown
with Jupytext at every build and adds it as the page ``tutorial/fashion_mnist.md``: no
generated copy is committed, so page and script cannot drift apart.

**Sphinx roles.**
The package's docstrings are numpy-style and name other objects with Sphinx roles
(``:func:`load_detector```, ``:class:`~distilldetect.ModelDistillation```). Markdown has no
such roles, so this hook adds a small Markdown extension (to the site's pages and to the
Markdown that mkdocstrings renders docstrings with) that turns each role into an *optional*
mkdocs-autorefs cross-reference: a link when the target is documented on the site, plain code
otherwise. Optional references never warn, so ``mkdocs build --strict`` stays strict about
everything else.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from markdown import Extension, Markdown
from markdown.inlinepatterns import InlineProcessor
from markdown.preprocessors import Preprocessor
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

#: Jupytext scripts rendered as pages: script (under docs/) -> page
TUTORIALS = {"tutorial/fashion_mnist.py": "tutorial/fashion_mnist.md"}

# :role:`target`, :role:`~a.b.target`, :role:`title <target>`; role may carry a domain (py:func)
ROLE_RE = r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const|ref|term):`([^`]+)`"


class SphinxRoleProcessor(InlineProcessor):
    """Replace a Sphinx role by an optional autoref to its target."""

    def handleMatch(self, m: re.Match, data: str):  # noqa: N802 - Markdown's API
        text = m.group(1).strip()
        titled = re.fullmatch(r"(.+?)\s*<([^<>]+)>", text)
        if titled:
            title, target = titled.group(1), titled.group(2)
        else:
            target = text.lstrip("~").lstrip(".")
            title = target.rsplit(".", 1)[-1] if text.startswith("~") else target
        target = target.lstrip("~").lstrip(".").rstrip("()")
        code = f"<code>{html.escape(title)}</code>"
        if re.fullmatch(r"[A-Za-z_][\w.]*", target):
            markup = f'<autoref identifier="{html.escape(target)}" optional>{code}</autoref>'
        else:
            markup = code
        placeholder = self.md.htmlStash.store(markup)
        return placeholder, m.start(0), m.end(0)


class LiteralBlockMarker(Preprocessor):
    """reST's ``text::`` before an indented literal block: show one colon (Markdown already
    renders the indented block as code)."""

    def run(self, lines: list[str]) -> list[str]:
        return [
            line[:-1] if line.endswith("::") and line.strip() != "::" else line for line in lines
        ]


class SphinxRolesExtension(Extension):
    """Markdown extension: Sphinx roles to optional autorefs, reST ``::`` markers to ``:``."""

    def extendMarkdown(self, md: Markdown) -> None:  # noqa: N802 - Markdown's API
        md.preprocessors.register(LiteralBlockMarker(md), "rst_literal_marker", 5)
        # above 'backtick' (190): the role's own backticks must not become a code span first
        md.inlinePatterns.register(SphinxRoleProcessor(ROLE_RE, md), "sphinx_roles", 200)


@event_priority(100)  # before mkdocstrings reads the list of Markdown extensions
def on_config(config):
    config.markdown_extensions.append(SphinxRolesExtension())
    return config


def tutorial_markdown(script: str | Path) -> str:
    """A Jupytext percent-format script as Markdown (its metadata header dropped)."""
    import jupytext

    notebook = jupytext.read(str(script))
    notebook.metadata = {}
    return jupytext.writes(notebook, fmt="md").lstrip()


def on_files(files: Files, config) -> Files:
    docs_dir = Path(config.docs_dir)
    for script, page in TUTORIALS.items():
        generated = File.generated(config, page, content=tutorial_markdown(docs_dir / script))
        generated.edit_uri = script  # "edit" links point at the script
        files.append(generated)
    return files
