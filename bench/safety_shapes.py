"""The texts this repository's own tests and stacks send, through each classifier: the shapes
that made the clean CI run fail with head 2 as the default.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/safety_shapes.py [--head KEY=PATH]... [--out FILE]

Families (each text is taken from the test module or gateway code that sends it, so that a
change there is seen here):
- reward loop: every question tests/test_reward_loop.py can ask (its ASKS x TOPICS and
  FRESH_TOPICS), input direction;
- made-up prompts: "word0 word1 ... wordN" as test_limits.py / test_stopped_answers.py /
  test_web_ui.py build them (N = 20, 80, 400);
- streamed scripts: the output windows the gateway's window cutter makes of the scripted
  answers of test_moderation.py (its clean part), test_stopped_answers.py and the bench
  stacks, each sent with the window before it, as the gateway sends them;
- system prompts: the intent routes' example system prompt.
None of these texts is a training or validation text (train_head.py's overlap check covers the
evaluation sets only; this is a check of behaviour, not a measure of accuracy).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from safety_eval import Backend, limit_threads, service_backend  # noqa: E402


def module(path: Path) -> object:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded  # dataclasses look their module up there
    spec.loader.exec_module(loaded)
    return loaded


def stream_windows(text: str) -> list[str]:
    """What output moderation sends for a streamed text: each window with the one before."""
    from parlance.gateway.config import GatewaySettings
    from parlance.gateway.moderation import WindowCutter

    cutter = WindowCutter.from_settings(GatewaySettings(moderate_output=True))
    windows = cutter.windows([word + " " for word in text.split()])
    return [before + window for before, window in zip(["", *windows], windows, strict=False)]


def families() -> dict[str, list[str]]:
    loop = module(ROOT / "tests" / "test_reward_loop.py")
    questions = [
        ask.format(t=topic)
        for ask in loop.ASKS  # type: ignore[attr-defined]
        for topic in [*loop.TOPICS, *loop.FRESH_TOPICS]  # type: ignore[attr-defined]
    ]
    made_up = [" ".join(f"word{i}" for i in range(n)) for n in (20, 80, 400)]
    moderation = module(ROOT / "tests" / "test_moderation.py")
    ttft = module(ROOT / "bench" / "safety_ttft.py")
    scripts = [
        moderation.CLEAN + " Have a nice day." + " The trains run on time today." * 6,  # type: ignore[attr-defined]
        " ".join(f"word{i}" for i in range(400)),
        ttft.TEXT,  # type: ignore[attr-defined]
    ]
    windows = [w for script in scripts for w in stream_windows(script)]
    system = ["You are a careful programming assistant."]
    return {
        "reward-loop questions": questions,
        "made-up prompts": made_up,
        "streamed script windows": windows,
        "system prompts": system,
    }


def flagged(backend: Backend, texts: list[str]) -> list[tuple[str, list[str]]]:
    out = []
    for start in range(0, len(texts), 32):
        chunk = texts[start : start + 32]
        for text, scores in zip(chunk, backend.score(chunk), strict=True):
            hits = sorted(c for c, v in scores.items() if v >= backend.threshold)
            if hits:
                out.append((text, hits))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--head", action="append", default=[], metavar="KEY=PATH")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/safety_shapes.md")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    limit_threads(2)
    candidates = dict(spec.partition("=")[::2] for spec in args.head)
    backends = [service_backend("profanity"), service_backend("minilm")]
    backends += [service_backend("minilm", path) for path in candidates.values()]
    names = ["profanity", "minilm (shipped head)", *candidates]
    texts = families()
    lines = [
        "# The repository's own test and bench texts through each classifier",
        "",
        "```",
        "HF_HUB_OFFLINE=1 .venv/bin/python bench/safety_shapes.py " + " ".join(sys.argv[1:]),
        "```",
        "",
        "| classifier | " + " | ".join(texts) + " |",
        "|---|" + "---|" * len(texts),
    ]
    details = []
    for name, backend in zip(names, backends, strict=True):
        cells = []
        for family, family_texts in texts.items():
            hits = flagged(backend, family_texts)
            cells.append(f"{len(hits)}/{len(family_texts)}")
            details += [f"- {name}, {family}: {text[:90]!r} -> {cats}" for text, cats in hits]
        lines.append(f"| {name} ({backend.name}) | " + " | ".join(cells) + " |")
    lines += ["", "## Flagged texts", "", *(details or ["- none"]), ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
