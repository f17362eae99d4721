"""Validate bench/data/safety_eval_9 and print its counts.

Usage (from the repository root): .venv/bin/python bench/data/safety_eval_9/check.py

Checks: every non-comment line has the right number of tab-separated fields; toxic labels are
known categories, not repeated within a line, and harassment/threatening comes with harassment;
benign groups and kinds are allowed (benign is only everyday); no empty or padded text; no
duplicate text (case-insensitive, whitespace collapsed) within or across the two files; the
minimum counts issue #19 asked for. Exits 1 on any problem. Runs no classifier.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
CATEGORIES = ("hate", "harassment", "harassment/threatening", "violence", "self-harm", "sexual")
GROUPS = ("benign", "hard_negative")
MIN_TOXIC, MIN_PER_CATEGORY, MIN_BENIGN, MIN_HARD = 420, 60, 80, 280


def rows(name: str, fields: int, problems: list[str]) -> list[tuple[int, list[str]]]:
    out = []
    for number, line in enumerate((HERE / name).read_text(encoding="utf-8").splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != fields:
            problems.append(f"{name}:{number}: {len(parts)} fields, expected {fields}")
            continue
        text = parts[-1]
        if not text.strip() or text != text.strip():
            problems.append(f"{name}:{number}: empty or padded text")
        out.append((number, parts))
    return out


def main() -> int:  # noqa: C901 (one pass of checks, in order)
    problems: list[str] = []
    seen: dict[str, str] = {}

    def unique(where: str, text: str) -> None:
        key = re.sub(r"\s+", " ", text.lower()).strip()
        if key in seen:
            problems.append(f"{where}: duplicate of {seen[key]}")
        seen.setdefault(key, where)

    per_category: Counter[str] = Counter()
    per_combo: Counter[str] = Counter()
    toxic = rows("toxic.tsv", 2, problems)
    for number, (labels, text) in toxic:
        where = f"toxic.tsv:{number}"
        parts = labels.split(",")
        unknown = [p for p in parts if p not in CATEGORIES]
        if unknown:
            problems.append(f"{where}: unknown label(s) {unknown}")
        if len(set(parts)) != len(parts):
            problems.append(f"{where}: repeated label")
        if "harassment/threatening" in parts and "harassment" not in parts:
            problems.append(f"{where}: harassment/threatening without harassment")
        per_category.update(set(parts))
        per_combo[labels] += 1
        unique(where, text)

    per_group: Counter[str] = Counter()
    per_kind: Counter[str] = Counter()
    benign = rows("benign.tsv", 3, problems)
    for number, (group, kind, text) in benign:
        where = f"benign.tsv:{number}"
        if group not in GROUPS:
            problems.append(f"{where}: unknown group {group!r}")
        if group == "benign" and kind != "everyday":
            problems.append(f"{where}: benign group with kind {kind!r} (expected everyday)")
        if group == "hard_negative" and (kind == "everyday" or not re.fullmatch(r"[a-z_]+", kind)):
            problems.append(f"{where}: bad hard_negative kind {kind!r}")
        per_group[group] += 1
        if group == "hard_negative":
            per_kind[kind] += 1
        unique(where, text)

    if len(toxic) < MIN_TOXIC:
        problems.append(f"toxic.tsv: {len(toxic)} texts, fewer than {MIN_TOXIC}")
    for category in CATEGORIES:
        if per_category[category] < MIN_PER_CATEGORY:
            problems.append(f"toxic.tsv: {category} has {per_category[category]} texts")
    if per_group["benign"] < MIN_BENIGN:
        problems.append(f"benign.tsv: {per_group['benign']} benign texts, fewer than {MIN_BENIGN}")
    if per_group["hard_negative"] < MIN_HARD:
        problems.append(f"benign.tsv: {per_group['hard_negative']} hard negatives")

    total = len(toxic) + len(benign)
    print(
        f"{total} texts: {len(toxic)} toxic, {per_group['benign']} benign, "
        f"{per_group['hard_negative']} hard negatives"
    )
    print("toxic per category (a text counts once in each of its labels):")
    for category in CATEGORIES:
        print(f"  {category:24} {per_category[category]}")
    print("toxic per label combination:")
    for combo, count in sorted(per_combo.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {combo:42} {count}")
    print("hard negatives per kind:")
    for kind, count in sorted(per_kind.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {kind:24} {count}")
    for problem in problems:
        print("PROBLEM:", problem)
    print("OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
