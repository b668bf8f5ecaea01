"""Render a :class:`~modtransfer.reports.doc.Document` as Markdown (GitHub flavour), images as files beside it."""

from __future__ import annotations

from .doc import Bullets, Document, Image, Para, Pre, Table, TableCell


def _text(c: str | TableCell) -> str:
    s = c.text if isinstance(c, TableCell) else c
    return s.replace("|", "\\|").replace("\n", " ")


def _table(t: Table) -> str:
    lines = [f"**{t.caption}**", ""] if t.caption else []
    lines.append("| " + " | ".join(_text(h) for h in t.headers) + " |")
    lines.append("|" + "---|" * len(t.headers))
    lines += ["| " + " | ".join(_text(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def render(doc: Document) -> str:
    out = [f"# {doc.title}", "", doc.subtitle, ""]
    if doc.headline:
        out += [f"**{doc.headline}**", ""]
    if doc.banner:
        out += ["> ⚠ **Caveats**", ">"] + [f"> - {b}" for b in doc.banner] + [""]
    out.append(" · ".join(f"[{s.title}](#{s.id})" for s in doc.sections))
    out.append("")
    for s in doc.sections:
        out += [f'<a id="{s.id}"></a>', "", f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, Table):
                out.append(_table(b))
            elif isinstance(b, Image):
                out.append(f"![{b.alt}]({b.file})")
                if b.caption:
                    out += ["", "*" + b.caption.replace("*", "\\*") + "*"]
            elif isinstance(b, Para):
                out.append(b.text)
            elif isinstance(b, Bullets):
                out += [f"- {i}" for i in b.items]
            elif isinstance(b, Pre):
                out += ["```", b.text, "```"]
            out.append("")
    if doc.omitted:
        out += ["## Not shown", ""] + [f"- {o}" for o in doc.omitted] + [""]
    return "\n".join(out).rstrip() + "\n"
