"""The prose a reader sees on a built page, paragraph by paragraph (stdlib only).

Code, math, program output and text meant for another edition are left out:
what remains is what a translation must cover.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

#: Elements whose text is one piece of prose.
BLOCKS = {"p", "li", "h1", "h2", "h3", "h4", "h5", "h6", "th", "td", "dt", "dd", "figcaption", "caption"}
#: Elements (by tag) whose text is not prose.
SKIP_TAGS = {"code", "pre", "script", "style", "kbd", "svg", "math", "mjx-container"}
#: Classes whose element's text is not prose: math, program output, the other edition,
#: the navigation around the article (the theme translates its own labels).
SKIP_CLASSES = {
    "math", "pre", "bnlit-lang-en", "output", "highlight", "sig", "viewcode-link",
    "headerlink", "citation", "bd-sidebar-primary", "bd-sidebar-secondary", "bd-footer",
    "prev-next-area", "bd-header-article", "bnlit-language-switch", "docutils literal",
}
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uff00-\uffef]")


class _Prose(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool]] = []  # (tag, skipped)
        self.skip = 0
        self.in_main = 0
        self.block: list[str] | None = None
        self.block_depth = 0
        self.paragraphs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"br", "img", "hr", "meta", "link", "input", "wbr", "col", "source"}:
            return
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        skipped = tag in SKIP_TAGS or bool(classes & SKIP_CLASSES) or " ".join(sorted(classes)) in SKIP_CLASSES
        skipped = skipped or tag == "footer" or any("footer" in c for c in classes)  # the theme's footer
        if a.get("lang") == "en" or a.get("aria-hidden") == "true" or "hidden" in a:
            skipped = True
        self.stack.append((tag, skipped))
        self.skip += skipped
        if tag == "main":
            self.in_main += 1
        if tag in BLOCKS and self.block is None and not self.skip and self.in_main:
            self.block, self.block_depth = [], len(self.stack)

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            t, skipped = self.stack.pop()
            self.skip -= skipped
            if t == "main":
                self.in_main -= 1
            if self.block is not None and len(self.stack) < self.block_depth:
                text = " ".join("".join(self.block).split())
                if text:
                    self.paragraphs.append(text)
                self.block = None
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.block is not None and not self.skip:
            self.block.append(data)


def paragraphs(html: str) -> list[str]:
    """The prose paragraphs of a built page's article, in order."""
    parser = _Prose()
    parser.feed(html)
    return parser.paragraphs


def english_words(text: str, allowed: set[str]) -> list[str]:
    """The English words of ``text`` that are not names, symbols or allowed terms."""
    words = re.findall(r"[A-Za-z][A-Za-z'-]{2,}", text)
    return [w for w in words if w.lower() not in allowed and not w.isupper()]


def is_english(text: str, allowed: set[str]) -> bool:
    """A paragraph with no Japanese and three or more English words."""
    return not CJK.search(text) and len(english_words(text, allowed)) >= 3
