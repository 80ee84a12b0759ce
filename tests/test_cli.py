"""The ``ilre`` command line as a newcomer meets it: fast help, one-line refusals, pipes."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import QUESTION, SAMPLE

CLI = (sys.executable, "-m", "ilre_engine.cli")


def run_cli(
    *args: str | bytes, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``ilre ARGS`` in a subprocess, with `env` added to the environment."""
    return subprocess.run(
        [*CLI, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def assert_refused(done: subprocess.CompletedProcess, message: str) -> None:
    """Exit status 2 and exactly one line on standard error: ``ilre: error: ...message...``."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("ilre: error: "), done.stderr[-2000:]
    assert message in lines[0], lines[0]


def test_help_and_usage_errors_do_not_import_torch():
    code = (
        "import sys\n"
        "from ilre_engine.cli import main\n"
        "for argv in (['--help'], ['calibrate', '--help'], ['compress'], ['nope']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stderr.strip().splitlines()[-1] == "False False", done.stderr


def test_help_is_plain_text_and_shows_the_defaults():
    top = run_cli("--help")
    assert top.returncode == 0 and "``" not in top.stdout and "compress" in top.stdout
    calibrate = run_cli("calibrate", "--help")
    assert calibrate.returncode == 0
    for default in ("(default: 4k,8k)", "(default: 2)", "(default: 0.02)"):
        assert default in " ".join(calibrate.stdout.split())


@pytest.mark.parametrize(
    "args, message",
    [
        (("compress",), "the following arguments are required: --query/-q"),
        (("compress", "-q", "q", "--budget", "five"), "argument --budget: invalid int value"),
        (("compress", "-q", "q", "--budget", "5", "--ratio", "0.5"), "not allowed with"),
        (("translate",), "invalid choice: 'translate'"),
        ((), "the following arguments are required: COMMAND"),
    ],
)
def test_usage_errors_are_one_line(args, message):
    done = run_cli(*args, stdin="")
    assert_refused(done, message)
    assert "usage:" not in done.stderr


@pytest.mark.parametrize(
    "args, env, message",
    [
        (("--device", "bogus"), {}, "unknown device 'bogus'"),
        (("--device", "cuda"), {"CUDA_VISIBLE_DEVICES": ""}, "device 'cuda'"),
        (("--device", "cuda:0"), {"CUDA_VISIBLE_DEVICES": ""}, "device 'cuda:0'"),
    ],
)
def test_compress_refuses_a_device_it_cannot_use(args, env, message):
    assert_refused(
        run_cli("compress", "-q", "q", "--budget", "5", *args, str(SAMPLE), env=env), message
    )


def test_compress_refuses_a_model_file_that_is_not_gguf(tmp_path):
    env = {"ILRE_CACHE_DIR": str(tmp_path / "cache")}
    noise = tmp_path / "noise.gguf"
    noise.write_bytes(os.urandom(4096))
    done = run_cli(
        "compress", "-q", "q", "--budget", "5", "--model", str(noise), str(SAMPLE), env=env
    )
    assert_refused(done, "is not a GGUF file")
    # Past the magic bytes the loader fails; that too ends in one error line, no traceback.
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(4096))
    done = run_cli(
        "compress", "-q", "q", "--budget", "5", "--model", str(damaged), str(SAMPLE), env=env
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("ilre: error: cannot load the model")


def test_compress_refuses_an_undecodable_query():
    done = run_cli("compress", "-q", b"\xff", "--budget", "5", str(SAMPLE))
    assert_refused(done, "argument --query/-q: not valid UTF-8 text (byte 0xff")


@pytest.mark.parametrize("as_file", [True, False], ids=["file", "stdin"])
def test_compress_refuses_endless_input(as_file):
    if as_file:
        done = run_cli("compress", "-q", "q", "--budget", "5", "/dev/zero")
    else:
        with open("/dev/zero", "rb") as zero:
            done = subprocess.run(
                [*CLI, "compress", "-q", "q", "--budget", "5"],
                stdin=zero,
                capture_output=True,
                text=True,
                timeout=300,
            )
    assert_refused(done, "the input is too large")
    assert "256 MiB" in done.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (("--tolerance", "nan"), "argument --tolerance: must be in [0, 1], got 'nan'"),
        (("--lengths", "0"), "lengths must be >= 256 tokens, got 0"),
        (("--lengths", "-5"), "lengths must be >= 256 tokens, got -5"),
        (("--lengths", "inf"), "not a whole number of tokens"),
        (("--samples", "0"), "argument --samples: must be >= 1"),
        (("--lengths", "40k"), "longer than the 32768 positions gemma3-270m was trained on"),
    ],
)
def test_calibrate_refuses_bad_settings_before_measuring(args, message, tmp_path):
    out = tmp_path / "profile.json"
    assert_refused(run_cli("calibrate", *args, "--out", str(out)), message)
    assert not out.exists()


def test_calibrate_refuses_a_directory_as_out_and_leaves_no_temp_file(tmp_path):
    folder = tmp_path / "cli"
    folder.mkdir()
    done = run_cli("calibrate", "--lengths", "1k", "--out", str(folder))
    assert_refused(done, f"argument --out: {folder} is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli"]
    assert not any(folder.iterdir())


def test_hub_id_offline_is_refused_at_once_and_says_why(tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    args = ("compress", "-q", "q", "--budget", "5", "--model", "nobody/no-such-model")
    done = run_cli(*args, str(SAMPLE), env=env)
    assert_refused(done, "not in the Hugging Face cache")
    assert "HF_HUB_OFFLINE is set" in done.stderr
    # Online mode, but the hub does not answer (nothing listens on the discard port).
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": ""}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        env[proxy] = ""
    done = run_cli(*args, str(SAMPLE), env=env)
    assert_refused(done, "http://127.0.0.1:9 is unreachable")


def test_compress_on_a_terminal_says_it_reads_standard_input():
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [*CLI, "compress", "-q", "q", "--budget", "5"],
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(terminal)
        os.write(controller, b"\x04")  # Ctrl-D on an empty line: end of input
        _, stderr = process.communicate(timeout=300)
    finally:
        os.close(controller)
    lines = stderr.strip().splitlines()
    assert "reading the documents from standard input" in lines[0] and "Ctrl-D" in lines[0]
    assert (
        process.returncode == 2
        and lines[1] == "ilre: error: standard input is empty (only whitespace)"
    )


def test_compress_prints_the_text_with_one_final_newline_then_the_stats():
    # The whole sample fits the budget: standard output is the sample exactly (it ends with
    # a newline, so none is added), and the stats follow on a line of their own.
    sample = SAMPLE.read_text(encoding="utf-8")
    args = [*CLI, "compress", "-q", QUESTION, "--ratio", "1", str(SAMPLE)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sample.endswith("\n") and done.stdout == sample
    both = subprocess.run(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600
    )
    assert both.stdout.startswith(sample) and both.stdout[len(sample) :].startswith("[ilre] ")


def test_compress_into_a_closed_pipe_exits_quietly(tmp_path):
    err = tmp_path / "stderr"
    with err.open("w") as stderr:
        process = subprocess.Popen(
            [*CLI, "compress", "-q", QUESTION, "--ratio", "1", str(SAMPLE)],
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        process.stdout.close()  # as `| head` does once it has its lines
        process.wait(timeout=600)
    assert process.returncode == 141, err.read_text()[-2000:]
    assert "Traceback" not in err.read_text() and "BrokenPipe" not in err.read_text()


def test_index_then_query_a_corpus_store(tmp_path):
    needle = tmp_path / "lock.txt"
    needle.write_text("The keeper of the north lock set the safe combination to 4-19-73.\n")
    other = tmp_path / "mill.txt"
    other.write_text("River barges moved grain and timber past the mill every day.\n")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "skip.txt").write_text("Never indexed.")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    store = tmp_path / "store"
    done = run_cli("index", str(store), str(tmp_path))  # the folder: its two text files
    assert done.returncode == 0, done.stderr[-2000:]
    assert "added 2, updated 0, skipped 0, deleted 0; 2 documents" in done.stderr
    done = run_cli("index", str(store), stdin="A third document, read from standard input.")
    assert done.returncode == 0 and "added 1, " in done.stderr, done.stderr[-2000:]
    assert "; 3 documents" in done.stderr
    done = run_cli(
        *("query", str(store), "-q", "What combination was set?", "--budget", "25", "--json"),
        *("--tokenizer", "cl100k_base"),  # issue 26: query had no --tokenizer
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert "4-19-73" in result["text"] and result["output_tokens"] <= 25
    sources = {span["source"] for span in result["spans"]}
    assert str(needle) in sources and sources <= {str(needle), str(other), "<stdin>"}


def index_summary(store: Path, *paths: Path | str, cleanup: bool = False) -> str:
    """The summary line of ``ilre index STORE PATHS``, which must succeed."""
    done = run_cli("index", str(store), *map(str, paths), *(["--cleanup", "full"] * cleanup))
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr.strip().splitlines()[-1]


def test_index_again_changes_only_what_changed(tmp_path):
    """Issue 26: indexing a folder twice added every document twice. A file is known by its
    path: unchanged ones are skipped, changed ones replaced, and with --cleanup full the
    documents of files that are gone are deleted."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in [("a", "Alpha holds the key."), ("b", "Beta holds the map."), ("c", "C.")]:
        (docs / f"{name}.txt").write_text(text)
    store = tmp_path / "store"
    assert "added 3, updated 0, skipped 0, deleted 0; 3 documents" in index_summary(store, docs)
    assert "added 0, updated 0, skipped 3, deleted 0; 3 documents" in index_summary(store, docs)
    (docs / "b.txt").write_text("Beta now holds the compass.")
    (docs / "c.txt").unlink()
    assert "added 0, updated 1, skipped 1, deleted 0; 3 documents" in index_summary(store, docs)
    line = index_summary(store, docs, cleanup=True)
    assert "added 0, updated 0, skipped 2, deleted 1; 2 documents" in line
    listed = run_cli("list", str(store), "--json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(row["source"] for row in rows) == [str(docs / "a.txt"), str(docs / "b.txt")]
    deleted = run_cli("delete", str(store), str(docs / "a.txt"))
    assert deleted.returncode == 0 and "deleted 1; 1 documents" in deleted.stderr, deleted.stderr
    stats = run_cli("stats", str(store), "--json")
    assert stats.returncode == 0 and json.loads(stats.stdout)["documents"] == 1, stats.stderr


@pytest.mark.parametrize("command", ["query", "list", "stats", "delete"])
def test_a_missing_store_is_refused_before_any_model_loads(command, tmp_path):
    """Issue 26: `ilre query` on a plain folder took 20 s to refuse it, the model loading
    first. The refusal imports neither torch nor transformers."""
    extra = {"query": ["-q", "x", "--budget", "5"], "delete": ["0"]}.get(command, [])
    for store in (tmp_path, tmp_path / "missing"):
        code = (
            "import sys\n"
            "from ilre_engine.cli import main\n"
            f"status = main([{command!r}, {str(store)!r}, *{extra!r}])\n"
            "print(status, 'torch' in sys.modules, 'transformers' in sys.modules)\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.stdout.split() == ["2", "False", "False"], done.stderr[-2000:]
        assert f"no corpus store at {store}: build one with `ilre index`" in done.stderr


def test_a_damaged_store_is_refused_before_any_model_loads(tmp_path):
    (tmp_path / "store.json").write_text('{"format": "something else"}')
    code = (
        "import sys\n"
        "from ilre_engine.cli import main\n"
        f"status = main(['index', {str(tmp_path)!r}, {str(SAMPLE)!r}])\n"
        "print(status, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False"], done.stderr[-2000:]
    assert "does not hold an ILRe corpus store" in done.stderr


@pytest.mark.parametrize("command", ["compress", "index"])
def test_a_file_that_is_not_utf8_is_named_by_its_path(command, tmp_path):
    """Issue 26: it was named by its index ("document 7")."""
    essay = tmp_path / "essay.txt"
    essay.write_text("Plain text.")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Caf\u00e9 au lait".encode("latin-1"))
    if command == "index":  # a folder, as the newcomer indexed it
        args = [str(tmp_path / "store"), str(tmp_path)]
    else:
        args = ["-q", "q", "--budget", "5", str(essay), str(latin1)]
    assert_refused(run_cli(command, *args), f"{latin1} is not valid UTF-8 at byte offset 3")


def test_empty_files_are_refused_alone_and_skipped_among_others(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert_refused(run_cli("compress", "-q", "q", "--budget", "5", str(empty)), f"{empty} is empty")
    assert_refused(run_cli("index", str(tmp_path / "s"), str(empty)), f"{empty} is empty")
    (tmp_path / "essay.txt").write_text("The essay has words.")
    done = run_cli("index", str(tmp_path / "s"), str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"ilre: warning: skipped {empty}: empty (only whitespace)" in done.stderr
    assert "added 1, updated 0, skipped 0, deleted 0; 1 documents" in done.stderr


def test_a_terminal_sees_the_model_load_and_quiet_silences_it(tmp_path):
    """Issue 26: a long command printed nothing until it ended. On a terminal it says what it
    is doing; --quiet, or standard error not a terminal, keeps standard error to results."""

    def stderr_of(*extra: str) -> str:
        controller, terminal = pty.openpty()
        try:
            process = subprocess.Popen(
                [*CLI, "compress", "-q", QUESTION, "--ratio", "1", *extra, str(SAMPLE)],
                stdout=subprocess.DEVNULL,
                stderr=terminal,
            )
            os.close(terminal)
            chunks = []
            while True:
                try:
                    chunk = os.read(controller, 4096)
                except OSError:  # the terminal closed: the process ended
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            assert process.wait(timeout=600) == 0
        finally:
            os.close(controller)
        return b"".join(chunks).decode(errors="replace")

    assert "[ilre] loading gemma3-270m" in stderr_of()
    assert "loading" not in stderr_of("--quiet")


def test_query_refuses_a_directory_without_a_store_at_once(tmp_path):
    assert_refused(run_cli("query", str(tmp_path), "-q", "x", "--budget", "5"), "ilre index")


def test_compress_keeps_what_the_python_api_keeps(engine):
    """The command line reads with the model's profile (its calibrated kernels), as
    `ILRe.from_pretrained()` does: the same text for the same budget."""
    text = SAMPLE.read_text(encoding="utf-8")
    done = run_cli("compress", "-q", QUESTION, "--budget", "80", "--json", str(SAMPLE))
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["text"] == engine.compress(text, QUESTION, budget_tokens=80).text
