"""Preference data: the formats read, every kind of bad data refused by the CLI with a clear
message and exit status 1 (no traceback, nothing written), and the held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parlance.trainer import data, synthetic
from parlance.trainer.cli import main
from parlance.trainer.errors import TrainError


def _line(prompt: object, chosen: object, rejected: object) -> str:
    return json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected})


def _refused(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """Runs the CLI on `text`; asserts the refusal and returns its message."""
    path = tmp_path / "prefs.jsonl"
    path.write_text(text)
    out = tmp_path / "models"
    code = main(["reward", "--data", str(path), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("parlance-train: error: ")
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())
    return err


def test_formats_are_normalized_to_conversations() -> None:
    lines = [
        # The export's form: conversational, explicit prompt.
        _line(
            [{"role": "user", "content": "Hi"}],
            [{"role": "assistant", "content": "Hello!"}],
            [{"role": "assistant", "content": "Go away."}],
        ),
        # Plain text with a prompt.
        _line("Hi", "Hello!", "Go away."),
        # Implicit prompt: the shared turns.
        json.dumps(
            {
                "chosen": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello!"},
                ],
                "rejected": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Go away."},
                ],
            }
        ),
    ]
    pairs = data.parse_preferences(("\n".join(lines) + "\n\n").encode(), "x")
    assert len(pairs) == 3
    for pair in pairs:
        assert pair.prompt == (("user", "Hi"),)
        assert pair.chosen == (("assistant", "Hello!"),)
        assert pair.rejected == (("assistant", "Go away."),)
    assert len({p.group for p in pairs}) == 1
    assert [p.line for p in pairs] == [1, 2, 3]


def test_empty_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(tmp_path, "\n  \n", capsys)
    assert "holds no preference pairs (it is empty)" in err


def test_malformed_lines_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _line("q", "a", "b")
    text = "\n".join(
        [
            good,
            '{"prompt": "q", "chosen": "a"',  # cut short
            "[1, 2]",
            good,
            json.dumps({"prompt": "q", "chosen": "a"}),
            _line("q", [{"role": "robot", "content": "a"}], "b"),
            _line("q", [{"role": "assistant", "content": ["parts"]}], "b"),
            _line("q", "   ", "b"),
        ]
    )
    err = _refused(tmp_path, text, capsys)
    assert "6 of 8 lines are not usable" in err
    assert "line 2: not valid JSON" in err
    assert "line 3: expected a JSON object" in err
    assert "line 5: missing 'rejected'" in err
    assert "line 6: 'chosen'[0] has role 'robot'" in err
    assert "line 7: 'chosen'[0] content must be a string" in err
    assert "line 8: 'chosen' is empty" in err
    assert "line 1:" not in err and "line 4:" not in err


def test_many_bad_lines_are_summarized(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(tmp_path, "not json\n" * 25, capsys)
    assert "25 of 25 lines" in err
    assert "line 10:" in err and "line 11:" not in err
    assert "... and 15 more bad lines" in err


def test_identical_answers_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [_line(f"q{i}", f"a{i}", f"b{i}") for i in range(60)]
    lines[41] = _line("q", [{"role": "assistant", "content": "Same."}], " Same. ")
    err = _refused(tmp_path, "\n".join(lines), capsys)
    assert "line 42: 'chosen' and 'rejected' are the same answer" in err


def test_plain_pairs_need_a_prompt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(tmp_path, json.dumps({"chosen": "a", "rejected": "b"}), capsys)
    assert "line 1: a pair of plain texts needs a 'prompt'" in err


def test_too_few_pairs_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = synthetic.jsonl(synthetic.pairs(10, seed=3))
    err = _refused(tmp_path, text, capsys, "--min-pairs", "50")
    assert "preference pairs; at least 50 are needed (--min-pairs)" in err


def test_one_prompt_cannot_be_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "\n".join(_line("same prompt", f"a{i}", f"b{i}") for i in range(60))
    err = _refused(tmp_path, text, capsys)
    assert "all 60 pairs answer one prompt" in err


def test_missing_file_and_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["reward", "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)])
    assert code == 1
    assert "cannot read" in capsys.readouterr().err
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "caf\xe9"}\n')
    assert main(["reward", "--data", str(path), "--out", str(tmp_path / "o")]) == 1
    assert "is not UTF-8 text" in capsys.readouterr().err


def test_split_keeps_prompts_whole_and_is_deterministic() -> None:
    records = synthetic.pairs(120, seed=5)
    pairs = data.parse_preferences(synthetic.jsonl(records).encode(), "x")
    first = data.split(pairs, 0.2, seed=1)
    assert {p.group for p in first.train}.isdisjoint({p.group for p in first.held_out})
    assert len(first.train) + len(first.held_out) == len(pairs)
    assert 0.15 * len(pairs) <= len(first.held_out) <= 0.3 * len(pairs)
    # The same seed gives the same split whatever the order of the lines; another seed differs.
    again = data.split(list(reversed(pairs)), 0.2, seed=1)
    assert {p.line for p in again.held_out} == {p.line for p in first.held_out}
    other = data.split(pairs, 0.2, seed=2)
    assert {p.line for p in other.held_out} != {p.line for p in first.held_out}


def test_eval_fraction_out_of_range() -> None:
    pairs = data.parse_preferences(synthetic.jsonl(synthetic.pairs(20)).encode(), "x")
    with pytest.raises(TrainError, match="--eval-fraction must be between 0 and 1"):
        data.split(pairs, 1.0, seed=0)
