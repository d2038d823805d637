"""Reading the YAML a user writes (a recipe, a sweep's plan file, an override's value) so that no input can
mislead the run or stall it.

- The file is UTF-8 text (a byte-order mark allowed), read by mtbert/textfiles.py: anything else is refused
  at its first bad byte, by offset and line, so a binary or Latin-1 file is one clear line, not a traceback.
- A key given twice in one mapping is an error naming both lines. YAML keeps the last silently, so a task
  listed twice would train with only one of its two settings.
- Aliases cannot expand without bound: the document may hold at most `MAX_VALUES` values once every alias
  is expanded, and no collection may contain itself. Nine levels of nine aliases ("billion laughs") are
  200 bytes on disk and 387 million strings expanded; the check visits each distinct node once, so it costs
  the size of the file, never of its expansion, and the walks that follow (the key -> line map, the typed
  recipe) are bounded by it.
- Nesting deeper than the parser's recursion can follow is one line, not a RecursionError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.reader import ReaderError

from mtbert.errors import MtbertError
from mtbert.textfiles import read_text

MAX_VALUES = 100_000
"Values (scalars, lists, mappings, keys) a document may hold with its aliases expanded; recipes hold hundreds."
MAX_BYTES = 4 * 2**20
"A recipe or plan file is a few kilobytes; a bigger file is a wrong path, read no further."


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping names the same key twice."""


class LimitError(yaml.MarkedYAMLError):
    """The document goes past what can be read in bounded time and memory: aliases that expand beyond
    MAX_VALUES or into themselves, nesting deeper than the parser recurses, a number of thousands of digits."""


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                # Merge keys (<<: *defaults) may be overridden by the mapping's own keys, as YAML means them to.
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                if key in first:
                    raise DuplicateKeyError(
                        problem=f"key {key_node.value!r} appears twice in one mapping (first on line "
                                f"{first[key].start_mark.line + 1}); YAML would keep only the last",
                        problem_mark=key_node.start_mark)
                first[key] = key_node
        return super().construct_mapping(node, deep=deep)


def parse(text: str) -> tuple[Any, yaml.Node | None]:
    """The document's data and its node graph (for line numbers); raises a yaml.YAMLError."""
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        check_expansion(node)
        return loader.construct_document(node), node
    except RecursionError:
        raise LimitError(problem="nested too deeply to read (lists or mappings inside each other hundreds "
                                     "of levels down)") from None
    except ValueError as e:  # Python refuses to convert an integer of more than 4300 digits
        raise LimitError(problem=f"a value that cannot be read: {e}") from None
    finally:
        loader.dispose()


def check_expansion(root: yaml.Node, limit: int = MAX_VALUES) -> int:
    """The number of values `root` holds with its aliases expanded; LimitError beyond `limit` or on a cycle.

    An alias is the very node its anchor names, so each distinct node is sized once and reused."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise LimitError(problem="an alias refers to a collection that contains it: it would contain "
                                         "itself forever", problem_mark=node.start_mark)
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        open_nodes.add(id(node))
        total = 1
        for child in children:
            total += size(child)
            if total > limit:
                raise LimitError(problem=f"its aliases expand to more than {limit:,} values (a \"billion "
                                             f"laughs\" document?); write the values out instead",
                                     problem_mark=node.start_mark)
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    return size(root)


def error_message(error: yaml.YAMLError, name: str | Path, text: str = "") -> str:
    """One line for a YAML error: the file and line, then what is wrong."""
    mark = getattr(error, "problem_mark", None)
    if isinstance(error, ReaderError):  # a control character, e.g. a NUL byte in UTF-8 text
        line = text.count("\n", 0, error.position) + 1
        return (f"{name}:{line}: not valid YAML: character #x{error.character:04x} at character "
                f"{error.position}: {error.reason}")
    where = f"{name}:{mark.line + 1}" if mark is not None else str(name)
    if isinstance(error, (DuplicateKeyError, LimitError)):
        return f"{where}: {error.problem}"
    problem = getattr(error, "problem", None) or str(error)
    return f"{where}: not valid YAML: {' '.join(problem.split())}"


def load_file(path: str | Path, what: str) -> tuple[Any, yaml.Node | None]:
    """Read, decode and parse a YAML file; any problem is an MtbertError of one line naming the file."""
    text = read_text(path, what, max_bytes=MAX_BYTES)
    try:
        return parse(text)
    except yaml.YAMLError as e:
        raise MtbertError(error_message(e, path, text)) from None
