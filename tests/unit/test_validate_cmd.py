"""``dcr-stream validate``: every example in ``schemas/examples`` earns the verdict its name says.

The command runs in-process through ``stream.cli.main`` (and once as the installed script), with
the settings ``schemas/README.md`` documents for the examples.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from stream.cli import main
from stream.validation import CODES, ONLINE_CODES

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"
VALID = sorted((EXAMPLES / "valid").glob("*.json"))
INVALID = sorted((EXAMPLES / "invalid").glob("*.json"))
ACCOUNT = "6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11"
LABEL = "0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a"
ALLOW_LIST = ["--allowed-label-ids", f"{ACCOUNT}:{LABEL}"]
SETTINGS = ("DCR_CLIENT_ACCOUNT_ID", "DCR_ALLOWED_LABEL_IDS", "DCR_MAX_MESSAGE_BYTES")
EVENT = (EXAMPLES / "valid" / "minimal.json").read_bytes()
NO_ACCOUNT = (EXAMPLES / "invalid" / "missing_client_account_id--no-account.json").read_bytes()


def label(example: Path) -> str:
    """``ok`` under ``valid/``; the code before ``--`` in the name under ``invalid/``."""
    return "ok" if example.parent.name == "valid" else example.name.split("--")[0]


@pytest.fixture(autouse=True)
def no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)


Run = Callable[..., tuple[int, list[str], str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """``run(*args, stdin=b"...")``: the exit status, the stdout lines and stderr."""

    def run(*args: str | Path, stdin: bytes = b"") -> tuple[int, list[str], str]:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        status = main(["validate", *map(str, args)])
        out, err = capsys.readouterr()
        return status, out.splitlines(), err

    return run


def test_the_examples_cover_every_code_an_event_can_earn_offline() -> None:
    assert VALID
    assert {label(example) for example in INVALID} == set(CODES) - ONLINE_CODES


def test_every_example_earns_its_label(run: Run) -> None:
    status, lines, err = run(*ALLOW_LIST, *VALID, *INVALID)

    assert status == 1
    verdicts = [line.split(": ", 1) for line in lines]
    assert [where for where, _ in verdicts] == [f"{p}:1" for p in [*VALID, *INVALID]]
    assert [verdict.split(" ")[0] for _, verdict in verdicts] == [
        label(p) for p in [*VALID, *INVALID]
    ]
    assert err == f"{len(lines)} lines: {len(VALID)} ok, {len(INVALID)} invalid\n"


def test_every_example_earns_its_label_as_json(run: Run) -> None:
    status, lines, _ = run("--json", *ALLOW_LIST, *VALID, *INVALID)

    assert status == 1
    for example, line in zip([*VALID, *INVALID], lines, strict=True):
        verdict = json.loads(line)
        assert (verdict["source"], verdict["line"]) == (str(example), 1)
        if label(example) == "ok":
            assert verdict == {"source": str(example), "line": 1, "ok": True}
        else:
            assert verdict["ok"] is False
            assert verdict["code"] == label(example)
            assert verdict["stage"] in ("decode", "validate")
            assert verdict["message"]


def test_a_field_is_named_or_a_dash(run: Run) -> None:
    no_receiver = EXAMPLES / "invalid" / "missing_field--no-receiver.json"
    array = EXAMPLES / "invalid" / "not_an_object--array-of-events.json"
    _, lines, _ = run(no_receiver, array)
    assert lines == [
        f"{no_receiver}:1: missing_field receiver receiver is required",
        f"{array}:1: not_an_object - the value must be a JSON object",
    ]


def test_all_valid_exits_0(run: Run) -> None:
    status, lines, _ = run(*ALLOW_LIST, *VALID)
    assert status == 0
    assert all(line.endswith(": ok") for line in lines)


@pytest.mark.parametrize("args", [[], ["-"]], ids=["no file", "dash"])
def test_stdin_line_by_line(run: Run, args: list[str]) -> None:
    stdin = EVENT + b"{oops\n\n" + EVENT.replace(b"\n", b"\r\n") + EVENT.rstrip(b"\n")
    status, lines, err = run(*args, stdin=stdin)
    assert status == 1
    assert [line.split(" ", 2)[:2] for line in lines] == [
        ["<stdin>:1:", "ok"],
        ["<stdin>:2:", "not_json"],
        ["<stdin>:3:", "empty_message"],
        ["<stdin>:4:", "ok"],
        ["<stdin>:5:", "ok"],
    ]
    assert err == "5 lines: 3 ok, 2 invalid\n"


def test_files_and_stdin_mixed(run: Run) -> None:
    minimal = EXAMPLES / "valid" / "minimal.json"
    status, lines, _ = run(minimal, "-", minimal, stdin=EVENT)
    assert status == 0
    assert lines == [f"{minimal}:1: ok", "<stdin>:1: ok", f"{minimal}:1: ok"]


def test_the_default_account_comes_from_the_environment(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DCR_CLIENT_ACCOUNT_ID", ACCOUNT)
    assert run("-", stdin=NO_ACCOUNT)[0] == 0


def test_the_flag_wins_over_the_environment(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCR_CLIENT_ACCOUNT_ID", "not a uuid")
    assert run("--client-account-id", ACCOUNT, "-", stdin=NO_ACCOUNT)[0] == 0


def test_the_allow_list_comes_from_the_environment(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DCR_ALLOWED_LABEL_IDS", f"{ACCOUNT}:{'0' * 8}-0000-4000-8000-{'0' * 12}")
    _, lines, _ = run("-", stdin=EVENT)
    assert lines[0].startswith("<stdin>:1: label_not_allowed label_id ")


@pytest.mark.parametrize(
    ("args", "env", "status"),
    [
        ([], {}, 0),
        (["--max-message-bytes", str(len(EVENT) - 1)], {}, 0),
        (["--max-message-bytes", str(len(EVENT) - 2)], {}, 1),
        ([], {"DCR_MAX_MESSAGE_BYTES": str(len(EVENT) - 2)}, 1),
    ],
    ids=["default", "exactly the event", "one byte less", "from the environment"],
)
def test_max_message_bytes(
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    status: int,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # The line's "\n" is not part of the value.
    assert run(*args, "-", stdin=EVENT)[0] == status


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--client-account-id", "nope"], {}, "--client-account-id"),
        ([], {"DCR_CLIENT_ACCOUNT_ID": "nope"}, "DCR_CLIENT_ACCOUNT_ID"),
        (["--allowed-label-ids", ACCOUNT], {}, "--allowed-label-ids"),
        (["--max-message-bytes", "0"], {}, "--max-message-bytes"),
        ([], {"DCR_MAX_MESSAGE_BYTES": "64k"}, "DCR_MAX_MESSAGE_BYTES"),
    ],
)
def test_a_bad_setting_exits_2_and_names_it(
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    named: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    status, lines, err = run(*args, "-", stdin=EVENT)
    assert (status, lines) == (2, [])
    assert err.startswith(f"dcr-stream validate: {named}: ")


def test_an_unreadable_file_exits_2_after_the_rest(run: Run, tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    minimal = EXAMPLES / "valid" / "minimal.json"
    status, lines, err = run(missing, minimal)
    assert status == 2
    assert lines == [f"{minimal}:1: ok"]
    assert f"dcr-stream validate: {missing}: No such file or directory" in err


def test_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["validate", "--help"])
    assert exit.value.code == 0
    help = capsys.readouterr().out
    assert "examples:\n  dcr-stream validate " in help
    assert "--client-account-id" in help
    assert "--max-message-bytes" in help


def test_the_installed_command(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(EVENT + NO_ACCOUNT)
    command = Path(sys.executable).with_name("dcr-stream")
    result = subprocess.run(
        [command, "validate", "--json", events],
        capture_output=True,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 1, result.stderr
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    assert [v["ok"] for v in verdicts] == [True, False]
    assert verdicts[1]["code"] == "missing_client_account_id"
    assert result.stderr == b"2 lines: 1 ok, 1 invalid\n"


def test_a_reader_that_goes_away_ends_it_quietly(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(EVENT * 20_000)  # far more verdicts than a pipe's buffer holds
    command = Path(sys.executable).with_name("dcr-stream")
    with subprocess.Popen(
        [command, "validate", events], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None
        assert process.stdout.readline().endswith(b":1: ok\n")
        process.stdout.close()
        _, err = process.communicate()
    assert process.returncode == 141
    assert err == b""
