"""Regenerate the bundled corpus (english.jsonl, code.jsonl) from local sources.

English: three public-domain Jane Austen novels, taken from the Debian package
``r-cran-janeaustenr`` (Project Gutenberg texts with the PG boilerplate already
stripped).  The package stores each novel as an R character vector inside an R
lazy-load database; we decode that tiny subset of R's serialization format
here rather than depend on an R installation.

Code: source files of the CPython standard library of the interpreter running
this script (PSF License), one file per document.

Usage (Debian/Ubuntu, needs ``apt-get download`` and ``dpkg-deb``)::

    python data/corpus/build_corpus.py [--out-dir data/corpus] [--austen-deb FILE.deb]

The output is deterministic for a given package version and CPython version;
PROVENANCE.md records which ones produced the committed files.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import json
import os
import re
import struct
import subprocess
import sysconfig
import tempfile
import zlib

AUSTEN_PACKAGE = "r-cran-janeaustenr"
# R object names inside the package's lazy-load DB, in the order we emit them.
AUSTEN_NOVELS = ["prideprejudice", "persuasion", "northangerabbey"]
# Target size of one English document; chapters longer than this are split at
# paragraph boundaries so documents stay "a few KB" (a chapter is never mixed
# with the next one).
ENGLISH_DOC_CHARS = 4000

# Code budget and filters: small-to-medium modules make reasonable documents;
# huge generated tables and test suites are not representative code.
CODE_BUDGET_BYTES = 1_400_000
CODE_MIN_BYTES = 1_500
CODE_MAX_BYTES = 40_000
CODE_EXCLUDED_DIRS = {
    "site-packages", "test", "tests", "idlelib", "tkinter", "turtledemo", "lib2to3",
    "ensurepip", "__phello__", "config-3", "pydoc_data", "encodings",
}


# ----------------------------------------------------------------------------
# English: Jane Austen from the Debian package
# ----------------------------------------------------------------------------

def fetch_austen_deb(workdir: str) -> str:
    """Download the .deb into workdir with apt (no install, no root needed for files)."""
    subprocess.run(["apt-get", "download", AUSTEN_PACKAGE], cwd=workdir, check=True)
    debs = glob.glob(os.path.join(workdir, f"{AUSTEN_PACKAGE}_*.deb"))
    if len(debs) != 1:
        raise RuntimeError(f"expected one {AUSTEN_PACKAGE} .deb in {workdir}, got {debs}")
    return debs[0]


class _RReader:
    """Minimal reader for R's XDR serialization format (``serialize()``/.rds/.rdb).

    Supports only what the janeaustenr data uses: generic vectors (lists),
    character, integer and logical vectors, symbols, pairlists (attributes)
    and back-references to symbols.  Named vectors come back as dicts.
    """

    NILVALUE, REFSXP = 254, 255
    SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, STRSXP, VECSXP = 1, 2, 9, 10, 13, 16, 19

    def __init__(self, blob: bytes) -> None:
        if blob[:2] != b"X\n":
            raise ValueError("not an XDR R serialization")
        self.blob, self.pos, self.refs = blob, 2, []
        version = self._int()
        self.pos += 8  # writer version, minimal reader version
        if version == 3:
            self.pos += 4 + self._int()  # native encoding name

    def _int(self) -> int:
        (value,) = struct.unpack(">i", self.blob[self.pos:self.pos + 4])
        self.pos += 4
        return value

    def read(self):
        flags = self._int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind == self.NILVALUE:
            return None
        if kind == self.REFSXP:
            return self.refs[(flags >> 8) - 1]
        if kind == self.SYMSXP:
            sym = self.read()
            self.refs.append(sym)
            return sym
        if kind == self.LISTSXP:  # pairlist: only used for attributes here
            attrs = {}
            while True:
                if has_attr:
                    self.read()
                tag = self.read() if has_tag else None
                attrs[tag] = self.read()
                flags = self._int()
                if flags & 0xFF == self.NILVALUE:
                    return attrs
                has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)
        if kind == self.CHARSXP:
            n = self._int()
            if n == -1:
                return None  # NA_character_
            text = self.blob[self.pos:self.pos + n].decode("utf-8")
            self.pos += n
            return text
        n = self._int()
        if kind in (self.INTSXP, self.LGLSXP):
            value = list(struct.unpack(f">{n}i", self.blob[self.pos:self.pos + 4 * n]))
            self.pos += 4 * n
        elif kind in (self.STRSXP, self.VECSXP):
            value = [self.read() for _ in range(n)]
        else:
            raise ValueError(f"unsupported R SEXP type {kind}")
        if has_attr:
            names = self.read().get("names")
            if names is not None:
                value = dict(zip(names, value))
        return value


def read_austen_novels(deb_path: str, workdir: str) -> dict[str, list[str]]:
    """Return {R object name: list of text lines} for every novel in the package."""
    extract = os.path.join(workdir, "deb")
    subprocess.run(["dpkg-deb", "-x", deb_path, extract], check=True)
    data_dir = os.path.join(extract, "usr/lib/R/site-library/janeaustenr/data")
    # Rdata.rdx (gzip'd) maps object name -> [offset, length] in Rdata.rdb, whose
    # entries are a 4-byte big-endian size followed by a zlib stream.
    with open(os.path.join(data_dir, "Rdata.rdx"), "rb") as f:
        index = _RReader(gzip.decompress(f.read())).read()
    with open(os.path.join(data_dir, "Rdata.rdb"), "rb") as f:
        rdb = f.read()
    novels = {}
    for name, (offset, length) in index["variables"].items():
        blob = zlib.decompress(rdb[offset + 4:offset + length])
        novels[name] = [line or "" for line in _RReader(blob).read()]
    return novels


_CHAPTER_RE = re.compile(r"^\s*(CHAPTER|Chapter)\s+([0-9IVXLC]+)\.?\s*$")
# Northanger Abbey ends with a modern editor's "note on the text" (from a 20th
# century edition); it is not Austen's and may not be public domain, so the
# novel is cut there.
_STOP_LINES = {"A NOTE ON THE TEXT"}


def split_novel(title: str, lines: list[str]) -> list[str]:
    """Split a hard-wrapped novel into documents of at most ~ENGLISH_DOC_CHARS chars.

    Paragraphs are un-wrapped (joined with spaces) because line breaks inside a
    paragraph are a typesetting artefact, and separated by blank lines.
    Everything before the first chapter heading (title page) is dropped.
    """
    chapters: list[list[str]] = []  # each: list of paragraphs
    para: list[str] = []
    current: list[str] | None = None
    for cut, line in enumerate(lines):
        if line.strip() in _STOP_LINES:
            lines = lines[:cut]
            break
    for line in lines + [""]:
        if _CHAPTER_RE.match(line):
            current = [line.strip()]
            chapters.append(current)
            para = []
            continue
        if current is None:
            continue
        if line.strip():
            para.append(line.strip())
        elif para:
            current.append(" ".join(para))
            para = []
    docs = []
    for chapter in chapters:
        heading, paragraphs = chapter[0], chapter[1:]
        chunk: list[str] = [f"{title}, {heading}"]
        size = len(chunk[0])
        for p in paragraphs:
            if size + len(p) > ENGLISH_DOC_CHARS and len(chunk) > 1:
                docs.append("\n\n".join(chunk))
                chunk, size = [], 0
            chunk.append(p)
            size += len(p) + 2
        if chunk:
            docs.append("\n\n".join(chunk))
    return docs


def build_english(deb_path: str | None, workdir: str) -> list[dict]:
    deb_path = deb_path or fetch_austen_deb(workdir)
    novels = read_austen_novels(deb_path, workdir)
    records = []
    for name in AUSTEN_NOVELS:
        lines = novels[name]
        title = lines[0].strip().title()
        for i, text in enumerate(split_novel(title, lines)):
            records.append({"text": text, "source": f"janeaustenr/{name}", "part": i})
    return records


# ----------------------------------------------------------------------------
# Code: CPython standard library
# ----------------------------------------------------------------------------

def build_code() -> list[dict]:
    stdlib = sysconfig.get_paths()["stdlib"]
    candidates = []
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in CODE_EXCLUDED_DIRS
                         and not d.startswith(("config-", "__pycache__")))
        for fn in files:
            if not fn.endswith(".py"):
                continue
            path = os.path.join(root, fn)
            size = os.path.getsize(path)
            if CODE_MIN_BYTES <= size <= CODE_MAX_BYTES:
                candidates.append(os.path.relpath(path, stdlib))
    # Order by a hash of the relative path: a deterministic but unbiased
    # sample (alphabetical order would take only modules starting with a-f).
    candidates.sort(key=lambda rel: hashlib.sha1(rel.encode()).hexdigest())
    records, total = [], 0
    for rel in candidates:
        with open(os.path.join(stdlib, rel), "rb") as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if total + len(raw) > CODE_BUDGET_BYTES:
            continue
        records.append({"text": text, "source": f"cpython/Lib/{rel}"})
        total += len(raw)
    records.sort(key=lambda r: r["source"])
    return records


def write_jsonl(path: str, records: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default=here)
    parser.add_argument("--austen-deb", default=None,
                        help=f"a downloaded {AUSTEN_PACKAGE}_*.deb (default: apt-get download)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        english = build_english(args.austen_deb, workdir)
    code = build_code()
    write_jsonl(os.path.join(args.out_dir, "english.jsonl"), english)
    write_jsonl(os.path.join(args.out_dir, "code.jsonl"), code)
    for name, recs in (("english", english), ("code", code)):
        nbytes = sum(len(r["text"].encode()) for r in recs)
        print(f"{name}: {len(recs)} documents, {nbytes / 1e6:.2f} MB of text")


if __name__ == "__main__":
    main()
