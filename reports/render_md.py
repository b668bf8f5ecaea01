"""Render a :class:`~modtransfer.reports.doc.Document` as Markdown (GitHub flavour), images as files beside it."""

from __future__ import annotations

from .doc import Block, Bullets, Document, Image, Para, Table, TableCell


def _text(c: str | TableCell) -> str:
    s = c.text if isinstance(c, TableCell) else c
    return s.replace("|", "\\|").replace("\n", " ")


def _table(t: Table) -> str:
    lines = [f"**{t.caption}**", ""] if t.caption else []
    lines.append("| " + " | ".join(_text(h) for h in t.headers) + " |")
    lines.append("|" + "---|" * len(t.headers))
    lines += ["| " + " | ".join(_text(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def _block(b: Block) -> list[str]:
    if isinstance(b, Table):
        return [_table(b)]
    if isinstance(b, Image):
        cap = ["", "*" + b.caption.replace("*", "\\*") + "*"] if b.caption else []
        return [f"![{b.alt}]({b.file})", *cap]
    if isinstance(b, Para):
        return [b.text]
    if isinstance(b, Bullets):
        return [f"- {i}" for i in b.items]
    return ["```", b.text, "```"]


def render(doc: Document) -> str:
    out = [f"# {doc.title}", "", doc.subtitle, ""]
    if doc.headline:
        out += [f"**{doc.headline}**", ""]
    if doc.banner:
        out += ["> ⚠ **Caveats**", ">"] + [f"> - {b}" for b in doc.banner] + [""]
    for b in doc.front:
        out += [*_block(b), ""]
    shown = [s for s in doc.sections if s.shown]
    out.append(" · ".join(f"[{s.title}](#{s.id})" for s in shown))
    out.append("")
    for s in shown:
        out += [f'<a id="{s.id}"></a>', "", f"## {s.title}", ""]
        for b in s.blocks:
            out += [*_block(b), ""]
    if doc.not_shown():
        out += ["## Not shown", ""] + [f"- {o}" for o in doc.not_shown()] + [""]
    return "\n".join(out).rstrip() + "\n"
