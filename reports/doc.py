"""A tiny document model, rendered twice: to one self-contained HTML page and to Markdown.

Text uses three bits of Markdown only, ``**bold**``, ``*emphasis*`` and ```code```, which both renderers know.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TableCell:
    text: str
    cls: str = ""        # CSS class in HTML (e.g. a verdict's colour)
    sort: str = ""       # sort key in HTML when the text does not sort well


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str | TableCell]]
    id: str = ""
    caption: str = ""


@dataclass
class Image:
    file: str            # name of the PNG next to the page
    alt: str
    caption: str = ""


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Pre:
    text: str


Block = Table | Image | Para | Bullets | Pre


@dataclass
class Section:
    title: str
    id: str
    blocks: list[Block] = field(default_factory=list)
    omitted: list[str] = field(default_factory=list)   # what it leaves out and why: listed under "Not shown"

    @property
    def shown(self) -> bool:
        """A section with no block is not drawn (its ``omitted`` notes still are, under "Not shown")."""
        return bool(self.blocks)


@dataclass
class Document:
    title: str
    subtitle: str
    sections: list[Section] = field(default_factory=list)
    headline: str = ""                                       # one sentence under the title
    banner: list[str] = field(default_factory=list)          # caveats shown above everything else
    front: list[Block] = field(default_factory=list)         # the answer and the design's reach, before sections
    omitted: list[str] = field(default_factory=list)         # "Section: why it is left out"

    def not_shown(self) -> list[str]:
        """Everything left out, with the reason: whole sections, then what each section leaves out."""
        return [*self.omitted, *(o for s in self.sections for o in s.omitted)]
