"""Small, dependency-free readers for the packaging files (Dockerfile, .dockerignore,
compose interpolation), so the tests can check them on a machine without Docker."""

from __future__ import annotations

import json
import re
import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
BACKEND_DOCKERFILE = REPO_ROOT / "docker" / "backend.Dockerfile"
TRAIN_DOCKERFILE = REPO_ROOT / "docker" / "train.Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
MODEL_BUNDLE = REPO_ROOT / "ml_model" / "models" / "default"


# --- Dockerfile ----------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str  # upper case
    args: str  # the rest of the (joined) line
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/RUN, else None."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value


@dataclass
class Stage:
    index: int
    base: str  # image reference with build ARGs substituted
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


@dataclass
class Copy:
    sources: list[str]
    dest: str
    flags: dict[str, str]


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"{self.path.name}: no stage named {name!r}")

    def env(self, stage: Stage) -> dict[str, str]:
        """ENV of ``stage`` (``KEY=VALUE`` pairs; no inheritance across named stages)."""
        result: dict[str, str] = {}
        for instruction in stage.all("ENV"):
            for token in shlex.split(instruction.args):
                key, sep, value = token.partition("=")
                assert sep, f"{self.path.name}:{instruction.line}: use ENV KEY=VALUE"
                result[key] = value
        return result


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Join backslash continuations; drop comments and blank lines (as Docker does)."""
    lines: list[tuple[int, str]] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # comment lines inside a continuation are removed
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        lines.append((start, " ".join(part for part in buffer if part)))
        buffer = []
    assert not buffer, "Dockerfile ends inside a line continuation"
    return lines


def _substitute(text: str, variables: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        default = match.group(2)
        value = variables.get(name, "")
        return value if value or default is None else default

    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", replace, text)


def parse_dockerfile(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, text in _logical_lines(path.read_text()):
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            words = args.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            base = _substitute(words[0], global_args)
            stages.append(Stage(len(stages), base, name))
        elif not stages:
            assert keyword == "ARG", f"{path.name}:{line}: only ARG may precede FROM"
            key, _, value = args.partition("=")
            global_args[key] = value.strip('"')
        else:
            stages[-1].instructions.append(Instruction(keyword, args, line))
    assert stages, f"{path.name}: no FROM"
    return Dockerfile(path, global_args, stages)


def parse_copy(instruction: Instruction) -> Copy:
    assert instruction.keyword in {"COPY", "ADD"}, instruction
    words = shlex.split(instruction.args)
    flags: dict[str, str] = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    if words and words[0].startswith("["):
        words = json.loads(" ".join(words))
    assert len(words) >= 2, f"line {instruction.line}: COPY needs a source and a destination"
    return Copy(sources=words[:-1], dest=words[-1], flags=flags)


def healthcheck_command(stage: Stage) -> list[str]:
    """The exec-form command of the stage's HEALTHCHECK ... CMD [...]."""
    instruction = stage.last("HEALTHCHECK")
    assert instruction is not None, "no HEALTHCHECK"
    match = re.search(r"(?:^|\s)CMD\s+(\[.*\])\s*$", instruction.args)
    assert match, f"HEALTHCHECK must use the exec form CMD [...]: {instruction.args!r}"
    command = json.loads(match.group(1))
    assert isinstance(command, list)
    return [str(part) for part in command]


# --- .dockerignore -------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore pattern (Go filepath.Match plus ``**``) as a regex."""
    out = ""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)  # a character class: same syntax as Python's
            out += pattern[i : end + 1]
            i = end + 1
            continue
        else:
            out += re.escape(char)
        i += 1
    return re.compile(out)


@dataclass
class DockerIgnore:
    rules: list[tuple[bool, re.Pattern[str]]]  # (is_exception, pattern)

    @classmethod
    def load(cls, path: Path = DOCKERIGNORE) -> DockerIgnore:
        rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exception = line.startswith("!")
            pattern = line[1:].strip() if exception else line
            pattern = pattern.strip("/") if pattern != "/" else pattern
            pattern = re.sub(r"/+", "/", pattern)
            if pattern.startswith("./"):
                pattern = pattern[2:]
            rules.append((exception, _pattern_regex(pattern)))
        return cls(rules)

    def excluded(self, relative: str) -> bool:
        """Is this context path left out? A path is out when it or a parent matches."""
        parts = Path(relative).parts
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for exception, regex in self.rules:
            if any(regex.fullmatch(candidate) for candidate in candidates):
                result = not exception
        return result


# --- compose -------------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


# The innermost `${...}` (a default without braces): nested defaults resolve inside out.
_INNERMOST = re.compile(r"\$\{(\w+)(?:(:?[-?])([^{}]*))?\}|\$(\w+)")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose variable interpolation (``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    nested defaults such as ``${A:-x${B:-y}}``, ``$$``) against ``env`` (defaults only when
    empty)."""
    env = env or {}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(4)
        operator, default = match.group(2), match.group(3)
        if operator == ":-":
            return env.get(name) or default
        if operator == "-":
            return env.get(name, default)
        missing = name not in env or (operator == ":?" and not env[name])
        if operator in {":?", "?"} and missing:
            raise KeyError(f"required variable {name} is not set: {default}")
        return env.get(name, "")

    text = value.replace("$$", "\0")  # a literal $, never a variable
    while True:
        replaced = _INNERMOST.sub(replace, text)
        if replaced == text:
            return text.replace("\0", "$")
        text = replaced


def compose_variables(value: str) -> set[str]:
    return {m.group(1) or m.group(4) for m in _INTERPOLATION.finditer(value) if m.group(0) != "$$"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
