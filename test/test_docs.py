"""The README and docs/ state what the code does: parameters, commands, flags, launch arguments, topics, paths, links.

Each test reads the Markdown as a user would and checks every name it finds against the code that defines it, so a
renamed parameter, subcommand, topic or module fails here until the docs follow.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import io
import re
import shlex
from pathlib import Path

import pytest

from sfm_ros.cli import build_parser
from sfm_ros.config import (
    MARKDOWN_BEGIN,
    MARKDOWN_END,
    ConfigError,
    NodeConfig,
    parameter_table,
    render_parameter_markdown,
    replace_marked_section,
)
from test.conftest import REPO
from training.config import TrainConfig

README = REPO / "README.md"
PARAMETERS = REPO / "docs" / "parameters.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
# Sections of the node's parameters and of the training config, as the docs write their dotted keys.
NODE_SECTIONS = ("pipeline", "scale")
TRAIN_SECTIONS = ("data", "model", "loss", "optim", "run")
# Backticked paths under these folders must exist in the repository.
FILE_SUFFIXES = {"py", "yaml", "json", "md", "txt", "onnx"}
REPO_FOLDERS = ("sfm_ros", "training", "benchmarks", "config", "launch", "test", "docs")


def _code(text: str) -> list[str]:
    """Inline code spans and fenced blocks (with line continuations joined), where docs name code."""
    blocks = [block.replace("\\\n", " ") for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return blocks + re.findall(r"`([^`\n]+)`", prose)


def _section(text: str, heading: str) -> str:
    """The text under a level-2 ``heading`` of a markdown page, up to the next level-2 heading."""
    assert f"## {heading}" in text, f"no '## {heading}' section"
    return text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]


def _page_id(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_the_parameter_reference_is_generated_from_the_code() -> None:
    text = PARAMETERS.read_text()
    assert MARKDOWN_BEGIN in text and MARKDOWN_END in text, "docs/parameters.md lost the parameter table's markers"
    expected = replace_marked_section(text, render_parameter_markdown())
    assert text == expected, ("docs/parameters.md is stale: run `python -m sfm_ros.config --markdown "
                              "docs/parameters.md`")


def test_the_readme_links_the_parameter_reference_from_its_parameters_section() -> None:
    section = _section(README.read_text(), "Parameters")
    assert "(docs/parameters.md)" in section
    assert "`scale.camera_height_m`" in section, "the one parameter every user sets"


def test_the_table_lists_every_parameter_with_its_default_and_when_it_applies() -> None:
    table = render_parameter_markdown()
    rows = {line.split("|")[1].strip(" `"): line for line in table.splitlines() if line.startswith("| `")}
    assert list(rows) == [spec.name for spec in parameter_table(NodeConfig)]
    assert "| `scale.camera_height_m` | `1.65` | live |" in rows["scale.camera_height_m"]
    assert "| `pipeline.bundle` | `\"\"` | restart |" in rows["pipeline.bundle"]
    assert "one of `camera_height`" in rows["scale.source"]


def test_replacing_the_marked_section_keeps_what_surrounds_it_and_needs_both_markers() -> None:
    text = f"before\n{MARKDOWN_BEGIN}\nold table\n{MARKDOWN_END}\nafter\n"
    assert replace_marked_section(text, "new\n") == f"before\n{MARKDOWN_BEGIN}\nnew\n{MARKDOWN_END}\nafter\n"
    with pytest.raises(ConfigError, match="markers are missing"):
        replace_marked_section("no markers here\n", "new\n")


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_parameter_named_exists(page: Path) -> None:
    node = {spec.name for spec in parameter_table(NodeConfig)}
    train = {spec.name for spec in parameter_table(TrainConfig)}
    missing = []
    for span in _code(page.read_text()):
        for section, key in re.findall(r"(?<![\w/.-])(" + "|".join(NODE_SECTIONS + TRAIN_SECTIONS) +
                                       r")\.([a-zA-Z_]\w*)\b(?![./\w-])", span):
            name = f"{section}.{key}"
            if key in FILE_SUFFIXES:  # `pipeline.py` is a file
                continue
            if name not in (node if section in NODE_SECTIONS else train):
                missing.append(name)
    assert not missing, f"{_page_id(page)} names parameters the code does not declare: {sorted(set(missing))}"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_parameter_value_named_is_allowed(page: Path) -> None:
    specs = {spec.name: spec for spec in (*parameter_table(NodeConfig), *parameter_table(TrainConfig))}
    wrong = []
    for span in _code(page.read_text()):
        for name, value in re.findall(r"^((?:[a-z]+\.)?[a-z_]+)(?:: |=)([\w.-]+)$", span):
            spec = specs.get(name)
            if spec is None and "." not in name:
                continue  # a plain word followed by a colon, not a parameter
            if spec is None:
                wrong.append(f"{name}: no such parameter")
            elif spec.choices and value not in spec.choices:
                wrong.append(f"{name}: {value} is not one of {list(spec.choices)}")
    assert not wrong, f"{_page_id(page)} names parameter values the code does not accept: {wrong}"


@functools.cache
def _help(*words: str) -> str:
    """What `sfm WORDS --help` prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([*words, "--help"])
    return out.getvalue()


def _subcommands(*words: str) -> set[str]:
    """The subcommands `sfm WORDS --help` lists (indented four spaces under its positional arguments)."""
    return set(re.findall(r"^    ([a-z][\w-]*)(?: |$)", _help(*words), flags=re.M))


def _flags(*words: str) -> set[str]:
    """The options `sfm WORDS --help` lists (indented two spaces, after any short form)."""
    return set(re.findall(r"^  (?:-\w(?: [\w=.]+)?, )?(--[a-z][\w-]*)", _help(*words), flags=re.M))


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_sfm_command_and_flag_named_exists(page: Path) -> None:
    problems = []
    for span in _code(page.read_text()):
        for line in span.splitlines():
            for command in re.findall(r"(?:^|&&|;)\s*sfm ((?:[a-z][\w-]*)(?: [^|;&#]*)?)", line):
                words = shlex.split(command.replace("'", "").replace('"', ""))
                used: list[str] = []
                while words and (choices := _subcommands(*used)):
                    if words[0] not in choices:
                        problems.append(f"`sfm {' '.join(used)} {words[0]}`: not a subcommand ({sorted(choices)})")
                        break
                    used.append(words.pop(0))
                known = _flags(*used)
                problems += [f"`sfm {' '.join(used)} {w}`" for w in words if w.startswith("--") and w not in known]
    assert not problems, f"{_page_id(page)} names commands or flags `sfm --help` does not have: {problems}"


def test_sfm_help_lists_the_commands_the_readme_names() -> None:
    named = {word for span in _code(README.read_text())
             for word in re.findall(r"(?:^|&&|;)\s*sfm ([a-z]+)", span, flags=re.M)}
    assert {"prepare", "train", "export", "replay"} <= named, named
    assert named <= _subcommands(), f"`sfm --help` does not list {sorted(named - _subcommands())}"
    assert {"inference", "odometry", "node"} <= _subcommands("bench") and "--bundle" in _flags("bench", "node")


def test_demo_help_states_the_default_steps() -> None:
    from training.demo import CPU_STEPS, GPU_STEPS

    text = " ".join(_help("demo").split())
    assert f"{CPU_STEPS} on CPU" in text and f"{GPU_STEPS} on a GPU" in text, text


def _launch_arguments() -> set[str]:
    tree = ast.parse((REPO / "launch" / "sfm.launch.py").read_text())
    return {node.args[0].value for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "DeclareLaunchArgument" and isinstance(node.args[0], ast.Constant)}


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_launch_argument_named_exists(page: Path) -> None:
    declared = _launch_arguments()
    assert {"bundle", "image", "camera_info"} <= declared
    named = {name for span in _code(page.read_text()) for name in re.findall(r"(?<![\w-])(\w+):=", span)}
    assert named <= declared, f"{_page_id(page)} names launch arguments sfm.launch.py lacks: {sorted(named - declared)}"


def _node_topics() -> set[str]:
    """The topic and service names sfm_ros/node.py creates: string constants passed to create_*, literally or through
    module-level names (``ODOM_TOPIC = "sfm/odom"``, also unpacked from a tuple)."""
    tree = ast.parse((REPO / "sfm_ros" / "node.py").read_text())
    constants: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                pairs = (zip(target.elts, node.value.elts, strict=True) if isinstance(target, ast.Tuple)
                         and isinstance(node.value, ast.Tuple) else [(target, node.value)])
                constants |= {name.id: value.value for name, value in pairs if isinstance(name, ast.Name)
                              and isinstance(value, ast.Constant) and isinstance(value.value, str)}
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in (
                "create_publisher", "create_subscription", "create_service"):
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.add(arg.value)
                elif isinstance(arg, ast.Name) and arg.id in constants:
                    names.add(constants[arg.id])
    return names


def test_readme_topics_are_the_nodes() -> None:
    table = _section(README.read_text(), "Topics")
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    named = {re.findall(r"`([^`]+)`", row.split("|")[2])[0] for row in rows if "`" in row.split("|")[2]}
    topics = _node_topics()
    assert {"image", "camera_info", "depth/image", "depth/camera_info", "sfm/odom", "reset"} <= topics
    # The speed topic's name is a parameter (the row names it); TF goes to /tf through tf2_ros's broadcaster.
    assert named <= topics | {"speed_topic", "/tf"}, sorted(named - topics)
    assert topics <= named | {"image/compressed"}, f"the README's topic table lacks {sorted(topics - named)}"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_repository_path_named_exists(page: Path) -> None:
    missing = []
    for span in _code(page.read_text()):
        for path in re.findall(r"(?<![\w/.~-])((?:" + "|".join(REPO_FOLDERS) + r")/[\w./*-]*\w)", span):
            if not any(REPO.glob(path)):
                missing.append(path)
    assert not missing, f"{_page_id(page)} names files that are not in the repository: {sorted(set(missing))}"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        anchor, n = github_anchor(heading), 1
        while anchor in anchors:
            anchor, n = f"{github_anchor(heading)}-{n}", n + 1
        anchors.add(anchor)
    return anchors


def test_github_anchor_matches_githubs_rule() -> None:
    # GitHub's anchors for headings of this repository, as github.com renders them.
    assert github_anchor("Odometry: network alone, refined, keyframes") == "odometry-network-alone-refined-keyframes"
    assert github_anchor("Learning: does a recipe learn? (`benchmarks/bench_learning.py`)") == \
        "learning-does-a-recipe-learn-benchmarksbench_learningpy"
    assert github_anchor("The depth net's target mirrored at random: the default since this section (four paths, "
                         "3000 steps)") == \
        "the-depth-nets-target-mirrored-at-random-the-default-since-this-section-four-paths-3000-steps"


@pytest.mark.parametrize("page", [*PAGES, RESULTS], ids=_page_id)
def test_every_relative_link_points_to_a_file_and_anchor_that_exist(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no such heading")
    assert not broken, f"{_page_id(page)} has broken links: {broken}"


def test_docs_exist_and_the_readme_links_each() -> None:
    names = {path.name for path in DOCS}
    assert {"method.md", "training.md", "odometry.md", "deployment.md", "design.md", "parameters.md"} <= names
    text = README.read_text()
    assert all(f"(docs/{name})" in text for name in names), "the README should link every page of docs/"
