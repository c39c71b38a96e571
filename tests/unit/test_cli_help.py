"""The command line's own promises: every command has a ``--help`` with examples that parse, and a
mistake is one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import shlex
import socket

import pytest

from stream.cli import _parser, main


def commands() -> dict[str, argparse.ArgumentParser]:
    parser, _ = _parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(subparsers.choices)


def examples() -> list[tuple[str, str]]:
    """(command, example) for every example line of every epilog."""
    found = []
    for name, sub in commands().items():
        lines = (sub.epilog or "").splitlines()
        assert lines[:1] == ["examples:"], f"{name} has no examples"
        found += [(name, line.strip()) for line in lines[1:]]
    return found


def test_every_command_is_listed() -> None:
    assert set(commands()) >= {"run", "kafka", "demo", "validate", "sandbox", "produce", "replay"}


@pytest.mark.parametrize("command", sorted(commands()))
def test_help_runs_and_shows_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: dcr-stream {command}" in out
    assert "examples:\n  " in out


def test_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "produce" in capsys.readouterr().out


def dcr_stream_part(example: str) -> list[str] | None:
    """The ``dcr-stream …`` words of an example line: after an environment prefix or a pipe,
    before a redirection or a pipe; None when the line does not run dcr-stream."""
    words = shlex.split(example)
    if "dcr-stream" not in words:
        return None
    words = words[words.index("dcr-stream") + 1 :]
    for stop in ("|", "<", ">"):
        if stop in words:
            words = words[: words.index(stop)]
    return words


@pytest.mark.parametrize(("command", "example"), examples())
def test_example_parses(command: str, example: str) -> None:
    argv = dcr_stream_part(example)
    if argv is None:
        assert example.startswith("curl "), f"{command}: {example}"
        return
    parser, _ = _parser()
    args = parser.parse_args(argv)  # argparse exits (SystemExit 2) on a bad example
    assert args.command == command


def refused_port() -> int:
    """A loopback port nothing listens on (bound and closed: refused at once, no timeout)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize(
    "argv",
    [
        ["produce", "--count", "1"],
        ["replay", "--dry-run"],
    ],
)
def test_unreachable_kafka_is_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("stream.tools.produce.CONNECT_TIMEOUT_S", 1.0)  # the default waits 10 s
    address = f"127.0.0.1:{refused_port()}"
    assert main([*argv, "--bootstrap-servers", address]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"dcr-stream {argv[0]}: Kafka at {address} did not answer")
    assert "--bootstrap-servers" in err


def test_bad_variable_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DCR_KAFKA_CONFIG", "{not json")
    assert main(["produce", "--count", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("dcr-stream produce: DCR_KAFKA_CONFIG:")


@pytest.mark.parametrize(
    "argv",
    [
        ["produce", "--count", "0"],
        ["produce", "--count", "5", "--invalid-ratio", "1.5"],
        ["produce", "--count", "5", "--label-id", "not-a-uuid"],
        ["produce", "--count", "5", "--accounts", "7,not-a-uuid"],
        ["produce", "--count", "5", "--accounts", ","],
        ["replay", "--stage", "transport"],
        ["replay", "--code", "api_rejected,no_such_code"],
        ["replay", "--partition", "one"],
        ["demo", "--events", "-3"],
    ],
)
def test_bad_flag_is_argparse_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"dcr-stream {argv[0]}: error: ")


def test_produce_needs_an_end(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["produce", "--rate", "100"]) == 2
    assert capsys.readouterr().err == (
        "dcr-stream produce: give --count N, or --duration S (with --rate R)\n"
    )
