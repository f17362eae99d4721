"""The checks of an evaluation set (bench/data/safety_eval_10 and later: toxic.tsv and
benign.tsv; their check.py scripts say what is checked and which sets each one may not read),
run by each set's check.py."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from pathlib import Path

from safety_set_check import close, other_texts

CATEGORIES = ("hate", "harassment", "harassment/threatening", "violence", "self-harm", "sexual")
GROUPS = ("benign", "hard_negative")
MIN_TOXIC, MIN_PER_CATEGORY, MIN_BENIGN, MIN_HARD = 420, 60, 80, 280
# Word-set Jaccard at or above which two texts count as near duplicates.
JACCARD = 0.7
Rows = list[tuple[str, list[str]]]


def rows(here: Path, name: str, fields: int, problems: list[str]) -> Rows:
    out = []
    for number, line in enumerate((here / name).read_text(encoding="utf-8").splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        where = f"{name}:{number}"
        if len(parts) != fields:
            problems.append(f"{where}: {len(parts)} fields, expected {fields}")
            continue
        text = parts[-1]
        if not text.strip() or text != text.strip():
            problems.append(f"{where}: empty or padded text")
        out.append((where, parts))
    return out


def check_toxic(toxic: Rows, problems: list[str]) -> tuple[Counter, Counter]:
    per_category: Counter[str] = Counter()
    per_combo: Counter[str] = Counter()
    for where, (labels, _text) in toxic:
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
    return per_category, per_combo


def check_benign(benign: Rows, problems: list[str]) -> tuple[Counter, Counter]:
    per_group: Counter[str] = Counter()
    per_kind: Counter[str] = Counter()
    for where, (group, kind, _text) in benign:
        if group not in GROUPS:
            problems.append(f"{where}: unknown group {group!r}")
        if group == "benign" and kind != "everyday":
            problems.append(f"{where}: benign group with kind {kind!r} (expected everyday)")
        if group == "hard_negative" and (kind == "everyday" or not re.fullmatch(r"[a-z_]+", kind)):
            problems.append(f"{where}: bad hard_negative kind {kind!r}")
        per_group[group] += 1
        if group == "hard_negative":
            per_kind[kind] += 1
    return per_group, per_kind


def check_duplicates(texts: list[tuple[str, str]], problems: list[str]) -> None:
    """Exact (case-insensitive, whitespace collapsed) and near duplicates within the set."""
    keys = [(where, re.sub(r"\s+", " ", text.lower()).strip()) for where, text in texts]
    words = [set(re.findall(r"[a-z0-9']+", key)) for _, key in keys]
    for (i, (wa, a)), (j, (wb, b)) in itertools.combinations(enumerate(keys), 2):
        union = words[i] | words[j]
        jaccard = len(words[i] & words[j]) / len(union) if union else 1.0
        if a == b:
            problems.append(f"{wb}: duplicate of {wa}")
        elif jaccard >= JACCARD or close(a, b):
            problems.append(f"{wb}: near duplicate of {wa} (word Jaccard {jaccard:.2f})")


def check_collisions(
    here: Path, skip: frozenset[str], texts: list[tuple[str, str]], problems: list[str]
) -> None:
    """This set's texts equal or close to another safety set's (only this set's lines shown);
    `skip`: the sets not to read."""
    pool = other_texts(here, skip)
    pool_set = set(pool)
    hits = 0
    for where, text in texts:
        key = text.strip().lower()
        if key in pool_set or any(close(key, other) for other in pool):
            problems.append(f"{where}: equal or close to another safety set's text: {text}")
            hits += 1
    skipped = f" (not {', '.join(sorted(skip))})" if skip else ""
    print(
        f"compared with {len(pool)} texts of the other bench/data/safety_* sets{skipped}: "
        f"{hits} of this set's {len(texts)} texts collide"
    )


def check_loader(here: Path, expected: int, problems: list[str]) -> None:
    """bench/safety_eval.py's load_set reads the folder: every line, known labels only."""
    from safety_eval import CATEGORIES as BENCH_CATEGORIES
    from safety_eval import load_set

    items = load_set(here)
    bad = [i for i in items if not i.labels <= set(BENCH_CATEGORIES)]
    groups = Counter(i.group for i in items)
    shown = dict(sorted(groups.items()))
    print(f"bench/safety_eval.py load_set: {len(items)} items, groups {shown}")
    if len(items) != expected or bad:
        problems.append(f"load_set: {len(items)} items, expected {expected}; {len(bad)} bad labels")


def check_minimums(
    toxic: int, per_category: Counter, per_group: Counter, problems: list[str]
) -> None:
    if toxic < MIN_TOXIC:
        problems.append(f"toxic.tsv: {toxic} texts, fewer than {MIN_TOXIC}")
    for category in CATEGORIES:
        if per_category[category] < MIN_PER_CATEGORY:
            problems.append(f"toxic.tsv: {category} has {per_category[category]} texts")
    if per_group["benign"] < MIN_BENIGN:
        problems.append(f"benign.tsv: {per_group['benign']} benign texts, fewer than {MIN_BENIGN}")
    if per_group["hard_negative"] < MIN_HARD:
        problems.append(f"benign.tsv: {per_group['hard_negative']} hard negatives")


def report(title: str, counts: Counter, width: int) -> None:
    print(title)
    for key, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {key:{width}} {count}")


def main(here: Path, skip: frozenset[str] | None = None) -> int:
    """Checks the set in `here` (see its check.py); with `skip` (the other sets' folders not to
    read) also its texts against the other safety sets'. 1 on any problem."""
    problems: list[str] = []
    toxic = rows(here, "toxic.tsv", 2, problems)
    benign = rows(here, "benign.tsv", 3, problems)
    per_category, per_combo = check_toxic(toxic, problems)
    per_group, per_kind = check_benign(benign, problems)
    check_duplicates([(w, p[-1]) for w, p in toxic + benign], problems)
    check_minimums(len(toxic), per_category, per_group, problems)

    print(
        f"{len(toxic) + len(benign)} texts: {len(toxic)} toxic, {per_group['benign']} benign, "
        f"{per_group['hard_negative']} hard negatives"
    )
    print("toxic per category (a text counts once in each of its labels):")
    for category in CATEGORIES:
        print(f"  {category:24} {per_category[category]}")
    report("toxic per label combination:", per_combo, 42)
    report("hard negatives per kind:", per_kind, 24)
    check_loader(here, len(toxic) + len(benign), problems)
    if skip is not None:
        check_collisions(here, skip, [(w, p[-1]) for w, p in toxic + benign], problems)
    for problem in problems:
        print("PROBLEM:", problem)
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0
