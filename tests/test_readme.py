"""Every command in README.md and the narrative docs pages runs as written, and every link in them resolves.

The shell blocks are read line by line (continuations joined, comments dropped, `&&`/`;`/`|` split): a
`maskstatus` line must parse with the real parser, and its --config must load with its key=value overrides;
a `make` target must exist in the Makefile, a pip extra in pyproject.toml, a `python` script (and each of its
--options) in the repository, a curl URL's path among the server's routes. A command of any other kind
fails the test, so a new kind of command comes with its check. Placeholders (DATA, runs/…-cv-…) stay as
they are: the parser and the config accept them as paths. Where a command is cheap it is also run:
`maskstatus --help`, and `validate-data` on a tiny drawn data set.
"""

from __future__ import annotations

import re
import shlex
import tomllib
import unicodedata
from pathlib import Path

import pytest

from maskstatus.cli import build_parser, main
from maskstatus.config import load_config
from maskstatus.errors import MaskstatusError

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# The narrative pages written by hand; the site's other pages are generated or kept elsewhere.
PAGES = ("getting-started.md", "data.md", "configuration.md", "training.md", "tracking.md", "prediction.md",
         "serving.md", "analysis.md")
MAX_README_LINES = 250
# Placeholders that stand for a number in an override (a path placeholder such as DATA needs none).
NUMBER_PLACEHOLDERS = {"N": "3"}
SHELL_LANGS = {"bash", "sh", "shell", "console"}
SEPARATORS = {";", "&&", "||", "|", "&"}


def documents() -> list[Path]:
    return [README, *(DOCS / page for page in PAGES)]


def doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every ``` block."""
    return [(m.group(1).lower(), m.group(2)) for m in re.finditer(r"^ *```(\w*)[^\n]*\n(.*?)^ *```", text, re.MULTILINE | re.DOTALL)]


def shell_commands(text: str) -> list[list[str]]:
    """The commands of the document's shell blocks, each as its words (quotes removed, as the shell would)."""
    commands = []
    for lang, body in fenced_blocks(text):
        if lang not in SHELL_LANGS:
            continue
        for line in re.sub(r"\\\n", " ", body).splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True  # keep `runs/best-cv-…` one word
            command: list[str] = []
            for word in lexer:
                if word in SEPARATORS:
                    commands.append(command)
                    command = []
                else:
                    command.append(word)
            commands.append(command)
    return [c for c in commands if c]


def all_commands() -> list[tuple[str, list[str]]]:
    # A missing page is reported by test_documents_exist_and_hold_commands, not as a collection error.
    return [(doc_id(doc), words) for doc in documents() if doc.is_file()
            for words in shell_commands(doc.read_text(encoding="utf-8"))]


def command_id(item: tuple[str, list[str]]) -> str:
    return f"{item[0]}: {' '.join(item[1])[:80]}"


COMMANDS = all_commands()


def test_documents_exist_and_hold_commands():
    missing = [doc_id(d) for d in documents() if not d.is_file()]
    assert missing == []
    assert len(README.read_text(encoding="utf-8").splitlines()) <= MAX_README_LINES
    kinds = {words[0] for _, words in COMMANDS}
    # Guards against a parser of the blocks that silently finds nothing.
    assert {"maskstatus", "make", "pip", "curl", "python"} <= kinds


def test_the_block_reader_splits_like_a_shell():
    text = ("```bash\nmaskstatus cv --config c.yaml \\\n    'x=[1, 2]'   # note\nmake a && make b; curl -F f=@x u\n"
            "```\n```yaml\nnot: shell\n```\n")
    assert shell_commands(text) == [["maskstatus", "cv", "--config", "c.yaml", "x=[1, 2]"], ["make", "a"],
                                    ["make", "b"], ["curl", "-F", "f=@x", "u"]]


# ---- each kind of command -------------------------------------------------------------------------------------


def check_maskstatus(args: list[str]) -> None:
    parser = build_parser()
    try:
        ns = parser.parse_args(args)
    except SystemExit as exit_:
        if exit_.code == 0 and ("--help" in args or "-h" in args):
            return
        raise AssertionError(f"maskstatus {' '.join(args)} does not parse (exit {exit_.code})") from None
    config = getattr(ns, "config", None)
    # A config inside a run folder (runs/…/config.yaml) is a placeholder; every other one must load.
    if config is not None and "…" not in str(config):
        overrides = [re.sub(r"=(\w+)$", lambda m: "=" + NUMBER_PLACEHOLDERS.get(m.group(1), m.group(1)), o)
                     for o in getattr(ns, "overrides", [])]
        load_config(ROOT / config, overrides)


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {t for line in re.findall(r"^([\w.%/ -]+):(?!=)", text, re.MULTILINE) for t in line.split()}


def check_make(args: list[str]) -> None:
    targets = [a for a in args if not a.startswith("-") and "=" not in a]
    assert targets, "a bare `make` runs whatever comes first; name the target"
    unknown = set(targets) - make_targets()
    assert not unknown, f"no such Makefile target: {sorted(unknown)}"


def check_pip(args: list[str]) -> None:
    assert args[:1] == ["install"], f"pip {' '.join(args)}: only `pip install` is documented"
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("optional-dependencies", {}))
    specs = [a for a in args[1:] if not a.startswith("-")]
    assert specs, "pip install of nothing"
    for spec in specs:
        m = re.fullmatch(r"(\.|maskstatus)(?:\[([\w,-]+)\])?", spec)
        assert m, f"pip install {spec}: install this package (., or maskstatus) with extras"
        unknown = set(filter(None, (m.group(2) or "").split(","))) - extras
        assert not unknown, f"pyproject.toml has no extra {sorted(unknown)}"


def check_python(args: list[str]) -> None:
    assert args and args[0].endswith(".py"), f"python {' '.join(args)}: expected a script"
    script = ROOT / args[0]
    assert script.is_file(), f"{args[0]} does not exist"
    source = script.read_text()
    for option in (a.split("=", 1)[0] for a in args[1:] if a.startswith("--")):
        assert f'"{option}"' in source, f"{args[0]} has no option {option}"


def server_routes() -> set[str]:
    source = "".join(p.read_text() for p in (ROOT / "src" / "maskstatus" / "serve").glob("*.py"))
    return set(re.findall(r"@app\.(?:get|post)\(\"([^\"]+)\"", source))


def check_curl(args: list[str]) -> None:
    urls = [a for a in args if a.startswith("http")]
    assert urls, "curl without a URL"
    for url in urls:
        path = re.sub(r"^https?://[^/]+", "", url) or "/"
        assert path in server_routes(), f"the server has no route {path}"


def check_source(args: list[str]) -> None:
    assert args == [".venv/bin/activate"], f"source {args}: only the venv `make setup` builds is documented"


def check_pre_commit(args: list[str]) -> None:
    assert (ROOT / ".pre-commit-config.yaml").is_file(), "pre-commit is documented but has no config"
    assert args[:1] in (["install"], ["run"]), f"pre-commit {' '.join(args)}"


def check_click_cli(cli, name: str, args: list[str]) -> None:
    """A command of a tracking library's own click CLI: the subcommand exists, and so does each of its --options."""
    assert args and args[0] in cli.commands, f"{name} has no command {args[:1]}"
    options = {opt for param in cli.commands[args[0]].params for opt in param.opts}
    unknown = {a.split("=", 1)[0] for a in args[1:] if a.startswith("-")} - options
    assert not unknown, f"{name} {args[0]} has no option {sorted(unknown)}"


def check_wandb(args: list[str]) -> None:
    from wandb.cli.cli import cli

    check_click_cli(cli, "wandb", args)


def check_mlflow(args: list[str]) -> None:
    from mlflow.cli import cli

    check_click_cli(cli, "mlflow", args)


CHECKS = {"maskstatus": check_maskstatus, "make": check_make, "pip": check_pip, "python": check_python,
          "curl": check_curl, "source": check_source, "pre-commit": check_pre_commit, "wandb": check_wandb,
          "mlflow": check_mlflow}


@pytest.mark.parametrize("item", COMMANDS, ids=command_id)
def test_command_runs_as_written(item):
    _, words = item
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value prefixes
        words = words[1:]
    assert words[0] in CHECKS, f"no check for commands of kind {words[0]!r}: add one to tests/test_readme.py"
    CHECKS[words[0]](words[1:])


@pytest.mark.parametrize("args", [
    ["trian", "--config", "configs/best.yaml"],            # misspelt command
    ["cv", "--confg", "configs/best.yaml"],                # misspelt option
    ["cv", "--config", "configs/bets.yaml"],               # missing config
    ["cv", "--config", "configs/best.yaml", "trian.epochs=3"],  # unknown key
    ["predict", "--run", "R", "--data", "D", "--out", "s.csv", "--tta", "hflp"],
])
def test_a_misspelt_maskstatus_command_fails(args):
    with pytest.raises((AssertionError, MaskstatusError)):
        check_maskstatus(args)


@pytest.mark.parametrize("check, args", [
    (check_make, ["demoo"]), (check_pip, ["install", "-e", ".[serv]"]), (check_python, ["benchmarks/nope.py"]),
    (check_python, ["benchmarks/readme_recipes.py", "--chek"]), (check_curl, ["http://127.0.0.1:8000/predcit"]),
    (check_wandb, ["snyc", "runs/x"]), (check_mlflow, ["server", "--backend-store-url", "runs/mlruns"]),
])
def test_other_misspelt_commands_fail(check, args):
    with pytest.raises(AssertionError):
        check(args)


def test_every_command_is_in_the_readme_table_and_inline_commands_exist():
    text = README.read_text(encoding="utf-8")
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    commands = set(sub.choices)
    # A command is one word, or two lower-case ones (cv merge); its arguments are upper case or options.
    table = {m.group(1) for m in re.finditer(r"^\| `maskstatus ([\w-]+(?: [a-z]+)?)", text, re.MULTILINE)}
    table |= set(re.findall(r"^\| `maskstatus demo` / `([\w-]+)`", text, re.MULTILINE))
    assert commands - table == set(), "commands missing from README's 'Commands at a glance'"
    for doc in documents():
        for name in re.findall(r"`maskstatus ([a-z][\w-]*)", doc.read_text(encoding="utf-8")):
            assert name in commands, f"{doc_id(doc)} names `maskstatus {name}`, which does not exist"


def test_every_config_named_loads():
    named = set()
    for doc in documents():
        named |= set(re.findall(r"\bconfigs/[\w./-]+\.yaml\b", doc.read_text(encoding="utf-8")))
    assert "configs/best.yaml" in named and "configs/best-cpu.yaml" in named
    for path in sorted(named):
        load_config(ROOT / path)


def test_yaml_examples_in_the_pages_are_valid_configs(tmp_path):
    """A config fragment in a page (```yaml) must validate on its own: a misspelt key is an error."""
    checked = 0
    for doc in documents():
        for lang, body in fenced_blocks(doc.read_text(encoding="utf-8")):
            if lang != "yaml":
                continue
            fragment = tmp_path / "fragment.yaml"
            fragment.write_text(body)
            try:
                load_config(fragment)
            except MaskstatusError as err:
                raise AssertionError(f"{doc_id(doc)}: this YAML example is not a valid config:\n{body}\n{err}") from err
            checked += 1
    assert checked, "no YAML examples found"


def test_help_runs(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "validate-data" in capsys.readouterr().out


def documented(command: str) -> list[list[str]]:
    found = [w for _, w in COMMANDS if w[:2] == ["maskstatus", command]]
    assert found, f"no `maskstatus {command}` in the documents"
    return found


def test_validate_data_runs_as_written_on_a_tiny_data_set(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["demo-data", str(data), "--people", "6", "--eval-people", "2"]) == 0
    capsys.readouterr()
    for words in documented("validate-data"):
        assert main([str(data) if w == "DATA" else w for w in words[1:]]) == 0, " ".join(words)
        assert capsys.readouterr().out.rstrip().endswith("OK")


@pytest.mark.slow  # draws the documented 120 people: several seconds, more on a busy CPU
def test_demo_data_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the documented output folder is relative: keep it in the scratch folder
    for words in documented("demo-data"):
        assert main(words[1:]) == 0, " ".join(words)
        data = tmp_path / words[2]
        assert (data / "train" / "train.csv").is_file() and (data / "eval" / "info.csv").is_file()
        capsys.readouterr()
        assert main(["validate-data", str(data)]) == 0


# ---- links ----------------------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """The anchor mkdocs (Python-Markdown's toc) gives a heading; GitHub's agrees for plain headings."""
    text = re.sub(r"\[([^]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.MULTILINE)}


def site_pages() -> set[str]:
    """Pages the docs site lists in its nav (some are generated at build time, so not all are files)."""
    mkdocs = ROOT / "mkdocs.yml"
    return set(re.findall(r"([\w./-]+\.md)\b", mkdocs.read_text())) if mkdocs.is_file() else set()


def links(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"!?\[[^]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)


@pytest.mark.parametrize("doc", documents(), ids=doc_id)
def test_every_relative_link_resolves(doc):
    found = links(doc.read_text(encoding="utf-8"))
    assert found, f"{doc_id(doc)} has no links: the link reader found nothing"
    in_docs = doc.parent == DOCS
    for link in found:
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        if in_docs:
            # mkdocs --strict rejects links that leave docs/: the site has only its own pages and files.
            assert DOCS in path.parents, f"{doc_id(doc)}: {link} leaves docs/; name the file as code instead"
        # The site also has pages generated at build time (named in mkdocs.yml, not files); only its own pages
        # may link to them: README.md is read on its own, where such a link would be dead.
        rel = path.relative_to(DOCS).as_posix() if in_docs and DOCS in path.parents else None
        assert path.exists() or rel in site_pages(), f"{doc_id(doc)}: dead link {link}"
        if anchor and path.suffix == ".md" and path.is_file():
            assert anchor in anchors(path), f"{doc_id(doc)}: {link}: no heading with anchor #{anchor}"


def test_the_anchor_and_link_readers():
    assert slug("Several GPUs (DDP)") == "several-gpus-ddp"
    assert slug("`maskstatus score`: intervals") == "maskstatus-score-intervals"
    assert links("[a](x.md#y) `[b](no.md)` ![c](p.png \"t\")\n```\n[d](no2.md)\n```") == ["x.md#y", "p.png"]


def test_pages_quote_no_benchmark_numbers():
    """Scores live in the result files and the benchmarks page; a page that types one goes stale silently."""
    for page in PAGES:
        text = (DOCS / page).read_text(encoding="utf-8")
        prose = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
        scores = re.findall(r"(?<![\w.])0\.[5-9]\d\d\b", prose)
        assert scores == [], f"docs/{page} types scores {scores}: link to benchmarks.md or a result JSON instead"


def test_source_files_and_modules_named_exist():
    """Pages name modules by path or dotted name; a move must take the pages along."""
    import importlib.util

    for doc in documents():
        text = doc.read_text(encoding="utf-8")
        for path in re.findall(r"\b((?:src|benchmarks|configs|docs|tests)/[\w/.-]*\w\.(?:py|yaml|csv|html|sh))\b", text):
            assert (ROOT / path).is_file(), f"{doc_id(doc)} names {path}, which does not exist"
        for module in re.findall(r"`(maskstatus(?:\.\w+)+)`", text):
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:  # a missing parent package
                found = False
            assert found, f"{doc_id(doc)} names module {module}, which does not exist"
