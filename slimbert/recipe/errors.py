"""One error type for every user mistake in a recipe: it carries each problem with its key path and line."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    path: str            # dotted key path, e.g. "transfer.0.optimizer.lr"; "" for the whole file
    message: str         # what is wrong and what was expected
    line: int | None = None
    file: str | None = None

    def __str__(self) -> str:
        if self.file is None and self.line is None and self.path:
            return f"{self.path}: {self.message}"  # e.g. "--out: ...": not about a place in the recipe file
        where = self.file or "recipe"
        if self.line is not None:
            where += f":{self.line}"
        key = f" {self.path}:" if self.path else ""
        return f"{where}:{key} {self.message}"


class RecipeError(ValueError):
    """Raised for bad recipes, overrides, paths and models; `problems` lists every problem found."""

    def __init__(self, problems: list[Problem] | Problem | str, frontier: dict | None = None):
        # frontier: a latency search that found no shape still timed some; `plan` shows them beside the error
        self.frontier = frontier
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def dotted(loc) -> str:
    return ".".join(str(x) for x in loc)
