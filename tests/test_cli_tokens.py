"""Tests of ``qwen-sse tokens``: text, stdin and messages files, limits, and input errors."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from qwen_sse.cli import main
from qwen_sse.tokens import message_token_count

PROMPT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "你是谁？"},
]
DOCUMENTED_IDS = [31935, 64559, 99320, 56007, 100629, 104795, 99788, 1773]


class FakeStdin:
    """Stands in for sys.stdin: bytes on ``buffer``, and whether it is a terminal."""

    def __init__(self, data: bytes, *, tty: bool = False) -> None:
        self.buffer = io.BytesIO(data)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def use_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes, *, tty: bool = False) -> None:
    monkeypatch.setattr(sys, "stdin", FakeStdin(data, tty=tty))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    """Exit status, stdout lines and stderr lines of ``qwen-sse tokens ARGV``."""
    status = main(["tokens", *argv])
    captured = capsys.readouterr()
    return status, captured.out.splitlines(), captured.err.splitlines()


def assert_one_line_error(status: int, out: list[str], err: list[str], text: str) -> None:
    assert status == 2
    assert out == []
    assert len(err) == 1
    assert err[0].startswith("qwen-sse tokens: ")
    assert text in err[0]


def test_text_argument(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "通义千问具有强大的能力。") == (0, ["8"], [])


def test_ids(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "--ids", "通义千问具有强大的能力。")
    assert (status, err) == (0, [])
    assert out[0] == "8"
    assert json.loads(out[1]) == DOCUMENTED_IDS


def test_stdin_with_dash_counts_every_byte(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(capsys, "hi there") == (0, ["2"], [])
    use_stdin(monkeypatch, b"hi there\n")
    assert run(capsys, "-") == (0, ["3"], [])


def test_piped_stdin_without_argument(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_stdin(monkeypatch, "我是来自阿里云的超大规模语言模型，我叫通义千问。".encode())
    assert run(capsys) == (0, ["17"], [])


def test_terminal_stdin_without_argument_is_an_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_stdin(monkeypatch, b"", tty=True)
    assert_one_line_error(*run(capsys), "give a TEXT")


def test_stdin_that_is_not_utf8(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_stdin(monkeypatch, b"ok \xff\xfe")
    assert_one_line_error(*run(capsys, "-"), "stdin is not UTF-8 text")


def test_messages_file_list(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "prompt.json"
    path.write_text(json.dumps(PROMPT), "utf-8")
    assert run(capsys, "--messages", str(path)) == (0, ["22"], [])


def test_messages_object_with_tools_and_a_bom(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    path = tmp_path / "request.json"
    path.write_text(json.dumps({"model": "qwen-max", "messages": PROMPT}), "utf-8-sig")
    assert run(capsys, "--messages", str(path)) == (0, ["22"], [])
    path.write_text(json.dumps({"messages": PROMPT, "tools": [tool]}), "utf-8")
    expected = message_token_count(PROMPT, [tool])
    assert expected.tokens > 22
    assert run(capsys, "--messages", str(path)) == (
        0,
        [str(expected.tokens)],
        [f"qwen-sse tokens: note: {note}" for note in expected.notes],
    )


def test_messages_from_stdin_with_a_media_note(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    prompt = [PROMPT[0], {"role": "user", "content": [image, {"type": "text", "text": "你是谁？"}]}]
    use_stdin(monkeypatch, json.dumps(prompt).encode())
    status, out, err = run(capsys, "--messages", "-")
    assert (status, out) == (0, ["22"])
    assert len(err) == 1
    assert "note: 1 image/audio/video part(s) not counted" in err[0]


def test_model_prints_limit_and_room(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "prompt.json"
    path.write_text(json.dumps(PROMPT), "utf-8")
    assert run(capsys, "--messages", str(path), "--model", "qwen-max") == (
        0,
        ["22", "qwen-max: input limit 30720 tokens, 30698 left; reply up to 8192 tokens"],
        [],
    )


def test_text_over_the_limit_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "--model", "qwen-max", "1" * 30_721)
    assert (status, out) == (1, ["30721"])
    assert err == [
        "qwen-sse tokens: prompt is 30721 tokens, over qwen-max's input limit of 30720 tokens"
    ]


@pytest.mark.parametrize("model", ["qwen-maxx", "qwen3-30b-a3b", "my-local-model"])
def test_a_model_without_documented_limits_still_gets_its_count(
    capsys: pytest.CaptureFixture[str], model: str
) -> None:
    status, out, err = run(capsys, "--model", model, "通义千问具有强大的能力。")
    assert (status, out) == (0, ["8"])
    assert len(err) == 1
    assert err[0].startswith(f"qwen-sse tokens: note: the limits of model {model!r}")
    assert "are not documented" in err[0]
    assert "(known: qwen-max, " in err[0]


def test_a_model_without_limits_is_never_over_them(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "prompt.json"
    path.write_text(json.dumps([{"role": "user", "content": "1" * 40_000}]), "utf-8")
    status, out, err = run(capsys, "--messages", str(path), "--model", "qwen-maxx")
    assert (status, out) == (0, [str(40_000 + 8)])
    assert len(err) == 1
    assert "not documented" in err[0]


def test_unreadable_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    assert_one_line_error(*run(capsys, "--messages", str(missing)), "No such file or directory")
    assert_one_line_error(*run(capsys, "--messages", str(tmp_path)), f"cannot read {tmp_path}")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'[{"role": "user", "content": "hi"}', "is not valid JSON"),
        (b"", "is not valid JSON"),
        (b'{"prompt": "hi"}', 'an object with "messages"'),
        (b'"hi"', "a JSON list of messages"),
        (b'[{"content": "hi"}]', "messages[0] needs a non-empty string 'role'"),
        (b'{"messages": [], "tools": {"name": "f"}}', "tools must be a list"),
        (b'[{"role": "user", "content": "\xff"}]', "is not UTF-8 text"),
    ],
)
def test_bad_messages_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    assert_one_line_error(*run(capsys, "--messages", str(path)), message)


def test_messages_take_no_text_and_no_ids(capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line_error(*run(capsys, "--messages", "x.json", "hi"), "neither a TEXT")
    assert_one_line_error(*run(capsys, "--messages", "x.json", "--ids"), "neither a TEXT")
