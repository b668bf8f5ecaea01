"""Render a :class:`~modtransfer.reports.doc.Document` as one self-contained HTML page.

Images are embedded as base64 PNG data URIs; the CSS and the few lines of JavaScript that
sort tables are inline, so the page needs no network and no other file.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from .doc import Block, Bullets, Document, Image, Para, Table, TableCell

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1b1b1b;
background:#fafafa;line-height:1.45}
main{max-width:1200px;margin:0 auto;padding:1.2rem 1.5rem 3rem}
h1{margin:.2rem 0 .1rem;font-size:1.7rem}h2{margin-top:2.2rem;border-bottom:2px solid #ddd;padding-bottom:.2rem}
.sub{color:#555;margin:0 0 1rem}
nav{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5rem .8rem;margin:.8rem 0;display:flex;
flex-wrap:wrap;gap:.3rem 1.1rem}
nav a{color:#0b5cad;text-decoration:none;white-space:nowrap}
table{border-collapse:collapse;margin:.6rem 0 1rem;background:#fff;font-size:.85rem}
th,td{border:1px solid #d4d4d4;padding:.28rem .5rem;text-align:left;vertical-align:top}
td{white-space:normal;overflow-wrap:anywhere;min-width:2.5rem}td.wrap{min-width:9rem}
th{background:#eef1f5;position:sticky;top:0;white-space:normal;min-width:3.5rem}
.headline{font-size:1.15rem;font-weight:600;margin:.4rem 0 .6rem}
.banner{background:#fff6e0;border:1px solid #e6c36a;border-radius:6px;padding:.45rem .9rem;margin:.6rem 0}
.banner ul{margin:.2rem 0;padding-left:1.2rem}
.omitted{color:#555;font-size:.9rem}
th.sortable{cursor:pointer;user-select:none}th.sortable:after{content:" \\2195";color:#999}
tr:nth-child(even) td{background:#f7f8fa}
caption{caption-side:top;text-align:left;color:#444;padding:.2rem 0;font-weight:600}
.scroll{overflow-x:auto}
figure{margin:.8rem 0;background:#fff;border:1px solid #e2e2e2;border-radius:6px;padding:.5rem;display:inline-block;
max-width:100%}
figure img{max-width:100%;height:auto;display:block}figcaption{color:#555;font-size:.85rem;margin-top:.3rem}
pre{background:#f2f2f2;border:1px solid #ddd;padding:.6rem;overflow:auto;font-size:.8rem;max-height:30rem}
code{background:#f0f0f0;padding:0 .2rem;border-radius:3px}
td.v-transfers{background:#cfe3f5!important;font-weight:600}
td.v-task-specific{background:#e3eef8!important}
td.v-neutral{background:#f0f0f0!important}
td.v-mixed{background:#f8ecd4!important}
td.v-hurts{background:#f7d9c9!important;font-weight:600}
td.v-unstable{background:#e8dcef!important;font-weight:600}
td.v-inconclusive{background:#fafafa!important;color:#555}
td.h-better-everywhere{background:#cfe3f5!important;font-weight:600}
td.h-worse-everywhere{background:#f7d9c9!important;font-weight:600}
td.h-no-change-everywhere{background:#f0f0f0!important;font-weight:600}
td.h-mixed{background:#f8ecd4!important}td.h-unstable{background:#e8dcef!important}td.h-unclear{color:#555}
td.c-better{color:#0a4f8a;font-weight:600}td.c-worse{color:#a23c00;font-weight:600}
td.c-unstable{color:#6a3d7a;font-weight:600}td.c-missing,td.c-unclear,td.c-varies{color:#777}
"""

JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  var heads = table.querySelectorAll('th');
  heads.forEach(function (th, col) {
    th.classList.add('sortable');
    th.addEventListener('click', function () {
      var body = table.tBodies[0];
      if (!body) { return; }
      var rows = Array.prototype.slice.call(body.rows);
      var asc = th.getAttribute('data-dir') !== 'asc';
      heads.forEach(function (h) { h.removeAttribute('data-dir'); });
      th.setAttribute('data-dir', asc ? 'asc' : 'desc');
      function key(row) {
        var cell = row.cells[col];
        if (!cell) { return ''; }
        var raw = cell.getAttribute('data-sort');
        var text = raw !== null ? raw : cell.textContent.trim();
        var num = parseFloat(text.replace(/[^0-9eE+.\\-]/g, ''));
        return (/^[-+]?[0-9.]/.test(text) && !isNaN(num)) ? num : text.toLowerCase();
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (typeof x === 'number' && typeof y === 'number') { return asc ? x - y : y - x; }
        x = String(x); y = String(y);
        return asc ? x.localeCompare(y) : y.localeCompare(x);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


#: ``*emphasis*`` as Markdown reads it: opened by a ``*`` before a non-space, closed by one after a non-space,
#: neither touching a word character outside (so ``2 * 3 * 4``, ``a*b`` and a lone ``*`` stay as they are).
EMPHASIS = re.compile(r"(?<![\w*])\*(?![\s*])(.+?)(?<![\s*])\*(?![\w*])")
CODE = re.compile(r"`([^`]+)`")


def _styled(text: str) -> str:
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))
    return EMPHASIS.sub(r"<em>\1</em>", out)


def inline(text: str) -> str:
    """Escape ``text`` and turn **bold**, *emphasis* and `code` into HTML (nothing is styled inside code)."""
    parts = CODE.split(text)   # even: prose, odd: code
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else _styled(p) for i, p in enumerate(parts))


def _cell(c: str | TableCell, tag: str = "td") -> str:
    if isinstance(c, TableCell):
        attrs = f' class="{html.escape(c.cls)}"' if c.cls else ""
        attrs += f' data-sort="{html.escape(c.sort)}"' if c.sort else ""
        return f"<{tag}{attrs}>{inline(c.text)}</{tag}>"
    return f"<{tag}>{inline(c)}</{tag}>"


def _table(t: Table) -> str:
    ident = f' id="{html.escape(t.id)}"' if t.id else ""
    cap = f"<caption>{inline(t.caption)}</caption>" if t.caption else ""
    head = "".join(f"<th>{inline(h)}</th>" for h in t.headers)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in t.rows)
    return (f'<div class="scroll"><table class="sortable"{ident}>{cap}<thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _image(img: Image, folder: Path) -> str:
    data = base64.b64encode((folder / img.file).read_bytes()).decode("ascii")
    cap = f"<figcaption>{inline(img.caption)}</figcaption>" if img.caption else ""
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(img.alt)}" '
            f'data-file="{html.escape(img.file)}">{cap}</figure>')


def _block(b: Block, folder: Path) -> str:
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Image):
        return _image(b, folder)
    if isinstance(b, Para):
        return f"<p>{inline(b.text)}</p>"
    if isinstance(b, Bullets):
        return "<ul>" + "".join(f"<li>{inline(i)}</li>" for i in b.items) + "</ul>"
    return f"<pre>{html.escape(b.text)}</pre>"


def render(doc: Document, folder: Path) -> str:
    """The page; PNGs named in the document are read from ``folder``."""
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(doc.title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{html.escape(doc.title)}</h1><p class=\"sub\">{inline(doc.subtitle)}</p>",
        f'<p class="headline" id="headline">{inline(doc.headline)}</p>' if doc.headline else "",
        ('<div class="banner" id="caveats"><ul>' + "".join(f"<li>{inline(b)}</li>" for b in doc.banner)
         + "</ul></div>") if doc.banner else "",
        ('<div class="front" id="front">' + "".join(_block(b, folder) for b in doc.front) + "</div>") if doc.front
        else "",
        "<nav>" + "".join(f'<a href="#{html.escape(s.id)}">{html.escape(s.title)}</a>' for s in doc.sections
                          if s.shown) + "</nav>",
    ]
    for s in doc.sections:
        if not s.shown:
            continue
        parts.append(f'<section id="{html.escape(s.id)}"><h2>{html.escape(s.title)}</h2>')
        parts.extend(_block(b, folder) for b in s.blocks)
        parts.append("</section>")
    if doc.not_shown():
        parts.append('<section id="omitted" class="omitted"><h2>Not shown</h2><ul>'
                     + "".join(f"<li>{inline(o)}</li>" for o in doc.not_shown()) + "</ul></section>")
    parts.append(f"</main><script>{JS}</script></body></html>")
    return "\n".join(parts)
