"""The documentation site: its generated pages are complete; `mkdocs build --strict` passes and catches dead links."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from maskstatus import config as config_module
from maskstatus.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _load_generate():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _load_generate()


def _config_models() -> list[type[BaseModel]]:
    """Every pydantic model defined in maskstatus.config, found by looking, not through the generator."""
    return [cls for _, cls in inspect.getmembers(config_module, inspect.isclass)
            if issubclass(cls, BaseModel) and cls.__module__ == config_module.__name__ and cls.model_fields]


def _sections(page: str) -> dict[str, str]:
    """'## heading {#anchor}' -> the text up to the next '## ' heading, keyed by the anchor."""
    parts = re.split(r"^## .*\{#([\w.-]+)\}\s*$", page, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_config_field_has_a_description():
    models = _config_models()
    assert len(models) > 10, "the config models were not found: the test would pass vacuously"
    missing = [f"{cls.__name__}.{name}" for cls in models for name, field in cls.model_fields.items()
               if not (field.description or "").strip()]
    assert missing == [], f"config fields without a Field(description=...): {missing}"


def test_config_reference_shows_every_section_and_field_with_its_description():
    page = generate.config_reference()
    sections = _sections(page)
    listed = generate.config_fields()
    # Every model of config.py is a section of the page (none left unreachable from Config).
    shown_models = {model for _, model in generate._sections(config_module.Config)}
    assert set(_config_models()) <= shown_models
    for path, name, field in listed:
        anchor = generate._anchor(path) if path else "top-level"
        assert anchor in sections, f"no section {path or 'top level'} on the configuration reference"
        key = f"{path}.{name}" if path else name
        rows = [line for line in sections[anchor].splitlines()
                if line.startswith(f'| <span id="{key}"></span>`{name}` |')]
        assert len(rows) == 1, f"{path}.{name} has {len(rows)} rows in its section"
        assert generate._markdown_text(field.description) in rows[0], f"{path}.{name}: description not shown"
    total = sum(len(cls.model_fields) for cls in _config_models())
    assert len(listed) >= total  # a section used twice (none today) would only add rows


def test_config_reference_shows_types_defaults_allowed_values_and_bounds():
    rows = {re.sub("<span.*</span>", "", line.split("|")[1]).strip(): line
            for line in _sections(generate.config_reference())["train"].splitlines() if line.startswith("| <span")}
    assert '`"32-true"`' in rows["`precision`"] and '`"bf16-mixed"`' in rows["`precision`"]  # Literal values
    assert "`64`" in rows["`batch_size`"] and "≥ 1" in rows["`batch_size`"]  # default and bound
    assert "≥ 0" in rows["`num_workers`"] and '`"auto"`' in rows["`num_workers`"]  # bound inside a Union
    assert "[train.sampler](#train-sampler)" in rows["`sampler`"]  # a nested section links to its heading
    pseudo = _sections(generate.config_reference())["data-pseudo"]
    assert '| <span id="data.pseudo.probs"></span>`probs` | path | required |' in pseudo


def _cli_commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(subparsers) == 1
    return dict(subparsers[0].choices)


def test_cli_reference_shows_every_command_option_and_choice():
    page = generate.cli_reference()
    sections = _sections(page)
    commands = _cli_commands()
    assert len(commands) > 10
    for name, sub in commands.items():
        anchor = name.replace(" ", "-")  # cv merge
        assert anchor in sections, f"command {name} has no section on the CLI reference"
        text = sections[anchor]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings or [action.metavar or action.dest]:
                assert f"`{option}`" in text, f"{name}: {option} is not on the CLI reference"
            for choice in action.choices or ():
                assert f"`{choice}`" in text, f"{name} {action.dest}: choice {choice} is not listed"
            if action.default not in (None, False, argparse.SUPPRESS, []) and not action.required:
                assert f"`{action.default}`" in text, f"{name} {action.dest}: default {action.default} not shown"
    for action in build_parser()._actions:
        for option in [] if isinstance(action, argparse._HelpAction) else action.option_strings:
            assert f"`{option}`" in page


def test_cli_reference_fills_in_help_placeholders():
    text = _sections(generate.cli_reference())["predict"]
    assert "about 1% of images" in text  # the parser's '1%%'
    assert "%(" not in generate.cli_reference()


def _ablation_stems() -> set[str]:
    plan = yaml.safe_load((ROOT / "benchmarks" / "ablation.yaml").read_text())
    return {generate._slug(row["name"]) for row in plan["rows"]}


def test_benchmarks_page_shows_every_result_file_and_ablation_row():
    page = generate.benchmarks_page()
    names = sorted(p.name for p in RESULTS.glob("*.json"))
    assert names, "no result JSONs: the test would pass vacuously"
    for name in names:
        assert f"`{name}`" in page, f"{name} is not on the benchmarks page"
    # Every ablation result is a row of the plan (its file name is the row's slug), so none is left out.
    stems = {p.stem for p in (RESULTS / "ablation").glob("*.json")}
    assert stems and stems <= _ablation_stems(), f"ablation JSONs of no plan row: {sorted(stems - _ablation_stems())}"
    for path in (RESULTS / "ablation").glob("*.json"):
        f1 = json.loads(path.read_text()).get("oof_f1")
        if isinstance(f1, float) and f1 == f1:
            assert f"{f1:.3f}" in page, f"{path.name}: its F1 is not on the page"


def test_benchmarks_page_numbers_come_from_the_json_files(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "x-ensemble.json").write_text(json.dumps({
        "members": [{"path": "/runs/a-cv-20260101-000000", "oof_f1": 0.4321}],
        "ensemble": {"oof_f1": 0.6543, "oof_f1_ci": [0.6111, 0.6999]},
        "gain_over_best_member": {"f1_gain": 0.0222, "f1_gain_ci": [0.0011, 0.0333]},
        "commit": "feedc0ffee", "command": "python benchmarks/cv_ensemble.py --member a --out x.json"}))
    (results / "y-unknown.json").write_text(json.dumps({"what": "a new study", "oof_f1": 0.5557,
                                                        "command": "python benchmarks/new_study.py"}))
    page = generate.benchmarks_page(tmp_path)
    ensemble_row = next(line for line in page.splitlines() if "`x-ensemble.json`" in line)
    for text in ("a-cv 0.432", "0.654 [0.611, 0.700]", "+0.022 [0.001, 0.033]", "| gain |"):
        assert text in ensemble_row
    assert "## Other results" in page and "a new study" in page and "0.556" in page  # no table of its own: shown
    assert "`None`" not in page  # a file without a commit shows none
    assert "Ablation" not in page  # no plan, no ablation section


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          check=False, capture_output=True, text=True, timeout=300, env=env)


def _needs_mkdocs() -> None:
    for module in ("mkdocs", "material"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install -e '.[docs]' to build the documentation site")


def test_site_builds_strict(tmp_path):
    _needs_mkdocs()
    start = time.perf_counter()
    out = _mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
    seconds = time.perf_counter() - start
    assert out.returncode == 0, f"mkdocs build --strict failed:\n{out.stdout}\n{out.stderr}"
    for page in ("reference/config/index.html", "reference/cli/index.html", "benchmarks/index.html"):
        assert (tmp_path / "site" / page).is_file(), f"generated page {page} missing from the site"
    assert not list((tmp_path / "site").rglob("*.py")), "docs/*.py copied into the site"
    assert seconds < 60, f"the site took {seconds:.0f} s to build"


def _tiny_project(tmp_path: Path, index: str) -> Path:
    """A two-page project with the real mkdocs.yml's theme, extensions and link validation."""
    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    cfg.pop("hooks")  # the tiny project has no generated pages
    cfg.pop("watch", None)
    cfg.update(docs_dir=str(tmp_path / "docs"), nav=[{"Home": "index.md"}, {"Other": "other.md"}])
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(index)
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## A heading\n")
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "mkdocs.yml"


@pytest.mark.parametrize("link, fails", [
    ("[fine](other.md#a-heading)", False),
    ("[gone](missing.md)", True),
    ("[no such anchor](other.md#nowhere)", True),
])
def test_strict_build_fails_on_a_dead_link(tmp_path, link, fails):
    _needs_mkdocs()
    out = _mkdocs(_tiny_project(tmp_path, f"# Home\n\nSee {link}.\n"), tmp_path / "site")
    assert (out.returncode != 0) == fails, out.stderr
    if fails:
        assert re.search(r"missing\.md|nowhere", out.stderr), out.stderr


def test_generated_pages_are_added_and_a_hand_written_copy_is_refused(tmp_path):
    _needs_mkdocs()
    from mkdocs.config import load_config
    from mkdocs.exceptions import PluginError
    from mkdocs.structure.files import File, Files

    config = load_config(str(ROOT / "mkdocs.yml"), site_dir=str(tmp_path / "site"))
    # Through the plugin collection, as a build calls it (mkdocs records which plugin made a generated file).
    files = config.plugins.on_files(Files([]), config=config)
    assert {f.src_uri for f in files} == set(generate.pages())
    assert "# Configuration reference" in files.get_file_from_path(generate.CONFIG_PAGE).content_string
    copy = File(generate.BENCHMARKS_PAGE, config.docs_dir, config.site_dir, config.use_directory_urls)
    with pytest.raises(PluginError, match="generated by docs/generate.py"):
        config.plugins.on_files(Files([copy]), config=config)
