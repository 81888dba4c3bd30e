"""docs/ja/README.md, the Japanese quick start, stays as honest as the English README.

Readers copy its commands as they are, so every command in its shell blocks is either one the
English README runs (the same words, comments aside) or a `sekisho` / `./run` command that the
command line really accepts, with its flags spelt out in full. Every relative link leads to a
file, and to a heading of it where the link names one, and the page links every document in
docs/, so a reader who starts there can reach all of them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from sekisho.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
JA = ROOT / "docs" / "ja" / "README.md"
EN = ROOT / "README.md"

SHELL_BLOCK = re.compile(r"^```(?:sh|bash|shell)\n(.*?)^```", re.S | re.M)
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# What ends one simple command in a shell line; a newline counts only outside quotes.
SEPARATORS = "();|&\n"
REDIRECTS = "<>"

Command = tuple[str, ...]


def _without_comments(block: str) -> str:
    """The block with each unquoted `# ...` removed up to its line's end (shlex's own comment
    handling swallows the newline too, which would join two commands into one)."""
    out: list[str] = []
    quote = ""
    i = 0
    while i < len(block):
        c = block[i]
        if quote:
            if c == quote:
                quote = ""
            elif c == "\\" and quote == '"' and i + 1 < len(block):
                out.append(c)  # \" inside double quotes does not end them
                i += 1
                c = block[i]
        elif c in "'\"":
            quote = c
        elif c == "#" and (not out or out[-1] in " \t\n"):
            while i < len(block) and block[i] != "\n":
                i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def simple_commands(block: str) -> list[Command]:
    """Each simple command of a shell block as its words, leading VAR=value assignments left
    out; the commands inside `$(...)` and each side of a pipe are commands of their own."""
    text = _without_comments(block).replace("\\\n", " ")
    lexer = shlex.shlex(text, posix=True, punctuation_chars=SEPARATORS + REDIRECTS)
    lexer.whitespace = " \t\r"
    lexer.whitespace_split = True
    lexer.commenters = ""
    commands: list[Command] = []
    words: list[str] = []
    for token in lexer:
        if token and set(token) <= set(SEPARATORS):
            commands.append(tuple(words))
            words = []
        elif not words and ASSIGNMENT.match(token):
            continue  # KEY=$( ... ) or SEKISHO_CONFIG=FILE before the command
        else:
            words.append(token)
    commands.append(tuple(words))
    return [c for c in commands if c]


def shell_commands(markdown: str) -> list[Command]:
    return [c for block in SHELL_BLOCK.findall(markdown) for c in simple_commands(block)]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _abbreviated_flag(args: list[str]) -> str | None:
    """A flag written shorter than its name: argparse takes `--ten` for `--tenant`, a reader
    copying it learns a spelling no other page uses, and a later flag can make it ambiguous."""
    parser = build_parser()
    for arg in args:
        if arg == "--":
            break
        if arg.startswith("--"):
            name = arg.split("=", 1)[0]
            if name not in parser._option_string_actions:
                return f"{name} is not a flag of `{parser.prog}` as written"
        elif arg.startswith("-") and len(arg) > 1:
            if arg[:2] not in parser._option_string_actions:
                return f"{arg[:2]} is not a flag of `{parser.prog}`"
        else:
            parser = _subcommands(parser).get(arg, parser)
    return None


def sekisho_problem(args: list[str]) -> str | None:
    """Why `sekisho ARGS` is not a command the CLI runs, or None when it is."""
    parser = build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            namespace = parser.parse_args(args)
    except SystemExit as exc:
        if exc.code in (0, None):
            return None  # --help, --version
        return err.getvalue().strip().splitlines()[-1]
    if getattr(namespace, "func", None) is None and getattr(namespace, "handler", None) is None:
        return "not a whole command: it names no action (sekisho prints its help and exits 2)"
    return _abbreviated_flag(args)


def _cli_args(command: Command) -> list[str]:
    """The words the command passes to sekisho: redirections (`> file`) are the shell's."""
    args: list[str] = []
    words = iter(command[1:])
    for word in words:
        if word and set(word) <= set(REDIRECTS):
            next(words, None)
            continue
        args.append(word)
    return args


def command_problem(command: Command, english: set[Command]) -> str | None:
    """Why a command of the Japanese page could mislead its reader, or None."""
    program, args = command[0], _cli_args(command)
    if program == "./run":
        if not args:
            return None  # ./run alone is ./run serve with the example
        if args[0] == "test":
            return None  # pytest's own arguments follow
        return sekisho_problem(args)
    if program == "sekisho":
        return sekisho_problem(args)
    if command in english:
        return None
    return "neither a sekisho command nor one of the English README's commands"


def command_problems(markdown: str) -> list[str]:
    english = set(shell_commands(EN.read_text(encoding="utf-8")))
    problems = []
    for command in shell_commands(markdown):
        problem = command_problem(command, english)
        if problem:
            problems.append(f"{shlex.join(command)}: {problem}")
    return problems


def heading_anchors(markdown: str) -> set[str]:
    """The anchors a Markdown renderer (GitHub's rule) gives a file's headings: lower case,
    punctuation (・, parentheses, colons, backticks) dropped, spaces made hyphens, and -1, -2 …
    after a repeated one. Lines inside code blocks are not headings."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        m = re.match(r"^#{1,6} +(.*?) *#*$", line)
        if in_code or not m:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def link_problems(markdown: str, page: Path) -> list[str]:
    prose = re.sub(r"^```.*?^```|`[^`\n]*`", "", markdown, flags=re.S | re.M)  # code is not links
    problems = []
    for target in LINK.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{target}: no such file ({file.relative_to(ROOT)})")
        elif anchor and anchor not in heading_anchors(file.read_text(encoding="utf-8")):
            problems.append(f"{target}: {file.relative_to(ROOT)} has no heading #{anchor}")
    return problems


def test_japanese_readme_runs_only_the_english_readmes_commands_or_real_sekisho_ones() -> None:
    text = JA.read_text(encoding="utf-8")
    commands = shell_commands(text)
    # what the page walks through: both commands, the tour, keys, a request, a verified receipt
    for needed in (
        ("./run", "serve"),
        ("./run", "test"),
        ("./run", "demo"),
        ("./run", "simulate"),
        ("./run", "serve", "--config", "examples/sekisho.yaml"),
        ("./run", "keys", "create", "--tenant", "demo", "--config", "examples/sekisho.yaml"),
        ("./run", "verify", "receipt.json", "--key", "$VERIFIER"),
    ):
        assert needed in commands, f"the Japanese quick start no longer runs {shlex.join(needed)}"
    assert command_problems(text) == []


def test_the_english_readme_commands_the_japanese_one_may_copy_are_real() -> None:
    """A command the Japanese page may copy from the English README is checked there too."""
    text = EN.read_text(encoding="utf-8")
    problems = [
        f"{shlex.join(c)}: {p}"
        for c in shell_commands(text)
        if c[0] in ("./run", "sekisho") and (p := command_problem(c, set()))
    ]
    assert problems == []


@pytest.mark.parametrize(
    ("right", "misspelt"),
    [
        ("./run verify receipt.json", "./run verfy receipt.json"),  # a subcommand
        ("./run keys create --tenant demo", "./run keys craete --tenant demo"),
        ("./run keys create --tenant demo", "./run keys create --tenat demo"),  # a flag
        ("./run keys create --tenant demo", "./run keys create --ten demo"),  # abbreviated
        ("./run keys ledger | tail -1", "./run keys | tail -1"),  # no action
        ("./run simulate", "./run simulte"),
        ("./run demo", "./rnu demo"),  # the program itself
        ("./run serve --config examples/sekisho.yaml", "./run serve --confg examples/sekisho.yaml"),
        ("--attach image", "--attach imgae"),  # a choice
        ("v1/chat/completions", "v1/chat/completoins"),  # curl's URL: not the README's
        ("grep -i '^x-' headers.txt", "grep -i '^x-' header.txt"),
        ("> receipt.json", "> reciept.json"),  # a redirection's file
        ("| tr -d '\\r')", "| tr -d '\\n')"),
    ],
)
def test_a_misspelt_command_in_the_japanese_readme_is_reported(right: str, misspelt: str) -> None:
    text = JA.read_text(encoding="utf-8")
    assert right in text, f"{right!r} is no longer in the page: pick another example"
    bad = text.replace(right, misspelt, 1)
    problems = command_problems(bad)
    assert problems, f"{misspelt!r} was not reported"


def test_every_relative_link_of_the_japanese_readme_resolves() -> None:
    text = JA.read_text(encoding="utf-8")
    assert link_problems(text, JA) == []
    broken = text.replace("../ledger.md#for-auditors-", "../ledger.md#for-auditor-", 1)
    assert link_problems(broken, JA), "a link to a missing heading was not reported"
    broken = text.replace("](../storage.md)", "](../storge.md)", 1)
    assert link_problems(broken, JA), "a link to a missing file was not reported"


def test_the_japanese_readme_links_every_document_and_the_english_readme_links_it() -> None:
    text = JA.read_text(encoding="utf-8")
    linked = {(JA.parent / t.partition("#")[0]).resolve() for t in LINK.findall(text)}
    missing = [d.name for d in sorted((ROOT / "docs").glob("*.md")) if d.resolve() not in linked]
    assert not missing, f"docs/ja/README.md does not link {missing}"
    top = EN.read_text(encoding="utf-8").splitlines()[:5]
    assert "日本語: [docs/ja/README.md](docs/ja/README.md)" in top


def test_the_python_examples_of_the_japanese_readme_are_python() -> None:
    blocks = PYTHON_BLOCK.findall(JA.read_text(encoding="utf-8"))
    assert len(blocks) == 2
    for block in blocks:
        compile(block, str(JA), "exec")


def client_table(text: str) -> list[list[str]]:
    """The backticked names (clients, settings, paths) in each row of a README's table of
    clients that work unchanged, row by row."""
    table = re.search(r"^\|[^\n]*\|\n\|---\|---\|---\|\n((?:\|[^\n]*\|\n)+)", text, re.M)
    assert table, "no table of clients"
    return [sorted(set(re.findall(r"`([^`]+)`", row))) for row in table[1].splitlines()]


def test_the_japanese_table_of_clients_names_what_the_english_one_names() -> None:
    """A client or path the English table gained (Java's HttpClient, /openai/responses) was
    missing from the Japanese one, whose readers would think it unsupported."""
    assert client_table(JA.read_text(encoding="utf-8")) == client_table(
        EN.read_text(encoding="utf-8")
    )
