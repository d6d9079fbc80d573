"""The coding reward's reading of model-written code: extraction and static checks, bounded.

These functions run in the trainer / orchestrator process on text a policy wrote, so none of
them may stall or break that process whatever the text is (issue 27, item 3):

- Input size is bounded: `CodingTask` analyses a response only up to `MAX_ANALYSED_CHARS`
  (a longer one is refused with a reason, see `too_long`); every function below is linear (or
  n log n) in its input, so the bound is also a bound on time.
- No regular expression here can backtrack more than linearly. The paper's thin-wrapper pattern
  `(\\w+)\\s*=\\s*aux\\s*\\(` is quadratic under `re.search` on a long run of word characters
  (a 40,000-character line took 13 s with the GIL held); `_ASSIGNED_AUX` matches exactly the
  same strings with the same group, but starts only at the beginning of a word run
  (`(?<!\\w)`) and never gives characters back (possessive `++` / `*+`, Python >= 3.11).
  Every other pattern either is anchored or can fail only on its first mismatching character.
- `ast.parse` is only reached through `parse_code`, which turns every way a parse can fail
  (SyntaxError, ValueError for NUL bytes, OverflowError, RecursionError and MemoryError for
  deeply nested code - a 10,000-character `----1` or `not not ... x`) into an error record;
  the reward then stops at its syntax level with that reason.

Extraction follows the paper's code (OpenMLRL/LLM_Collab_Code_Generation rewards/code_utils.py
@11f24c3: `cleanup_code` :49-169, `extract_specific_function` :172-205). Its `cleanup_code`
starts a new block at ANY `def` line, nested ones included (:75-84), and ends a block at the
first line not indented deeper than that `def` (:107-113), so the outer function's statements
after a nested function are dropped. `extract_function_ast` is the optional alternative
(`CodingTask(extraction="ast")`): the function as Python's parser delimits it.
"""

from __future__ import annotations

import ast
import re
import textwrap
from typing import Any

AUX_NAME = "aux"
# Per response. Agents answer in at most a few hundred tokens (deploy configs: max_tokens 256,
# max_tokens_limit 512); 64 Ki characters is over 100 characters a token at 512 tokens, and
# the whole analysis of two such responses takes well under a second.
MAX_ANALYSED_CHARS = 65_536
MAX_AST_CANDIDATES = 4  # `def name(` lines extract_function_ast tries a parse from

_DEF_LINE = re.compile(r"^(\s*)def\s+\w+\s*\(")
_ANY_DEF = re.compile(r"def\s+\w+\s*\(")
_FENCE_PY = re.compile(r"```python\s*\n?")
_FENCE = re.compile(r"```\s*\n?")
_IMPORT_LINE = (re.compile(r"^from\s+[\w\.]+\s+import\s+.*$"), re.compile(r"^import\s+[\w\.,\s]+$"))
_CODE_MARKERS = ("def ", "return ", "if ", "for ", "while ", "=", "(", ")", "[", "]")
_PROSE_LINE = re.compile(r"^[A-Z][a-z].*[.!?:]$")
_QUOTES = ('"' * 3, "'" * 3)
_RETURN = re.compile(r"return\s+")
_CALLS_AUX = re.compile(rf"\b{AUX_NAME}\s*+\(")
# code_utils.py:410 `(\w+)\s*=\s*aux\s*\(`, the same matches and group in linear time (above)
_ASSIGNED_AUX = re.compile(rf"(?<!\w)(\w++)\s*+=\s*+{AUX_NAME}\s*+\(")
_PAPER_IGNORED = re.compile(rf"{AUX_NAME}\s\([^)]\)")


def too_long(text: str, label: str) -> str | None:
    """Why `text` is not analysed (over `MAX_ANALYSED_CHARS`), or None when it is."""
    if len(text) <= MAX_ANALYSED_CHARS:
        return None
    return (f"{label} not analysed: the response is {len(text)} characters, over the "
            f"{MAX_ANALYSED_CHARS} the reward reads")


def parse_code(code: str) -> tuple[ast.Module | None, dict[str, Any] | None]:
    """(tree, None) or (None, error): `ast.parse` that never raises. The error record is what the
    feedback shows: {"line", "offset", "msg", "text"}."""
    try:
        return ast.parse(code), None
    except SyntaxError as e:
        return None, {"line": e.lineno, "offset": e.offset, "msg": e.msg, "text": str(e)}
    except (ValueError, OverflowError) as e:  # e.g. NUL bytes, a too-long literal
        msg = str(e)
    except RecursionError:
        msg = "code too deeply nested to analyse (RecursionError)"
    except MemoryError:
        msg = "code too complex to analyse (MemoryError: parser stack overflow)"
    return None, {"line": None, "offset": None, "msg": msg, "text": msg}


# ---------------------------------------------------------------- extraction (the paper's rules)

def strip_fences(response: str) -> str:
    """code_utils.py:57-59: markdown fences removed, their content kept."""
    return _FENCE.sub("", _FENCE_PY.sub("", response))


def clean_functions(response: str) -> str:
    """The `def` blocks of a response, as code_utils.py:49-169 `cleanup_code` extracts them.

    Fences are removed; a block starts at any line `def name(` (at any indent) and keeps blank
    lines, lines indented deeper than its `def`, and docstrings that start at the `def`'s level;
    the first other line ends it. Blocks are joined by a blank line; lines that read as prose
    (capitalised sentence, no code marker) are dropped; no `def` left -> "".
    """
    if not response or not isinstance(response, str):
        return ""
    lines = strip_fences(response).split("\n")
    blocks: list[list[str]] = []
    current: list[str] | None = None
    deeper = " "  # indent + 1 spaces, built once per block: linear in the text
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        starts = _DEF_LINE.match(line)
        if current is not None and not starts:
            if stripped == "" or line.startswith(deeper) or line.startswith("\t"):
                current.append(line)
            elif stripped.startswith(_QUOTES):
                current.append(line)
                quote = stripped[:3]
                if not (stripped.endswith(quote) and len(stripped) > 3):
                    i += 1
                    while i < len(lines):
                        current.append(lines[i])
                        if quote in lines[i]:
                            break
                        i += 1
            else:
                current = None
        if starts:
            current = [line]
            blocks.append(current)
            deeper = " " * (len(line) - len(line.lstrip()) + 1)
        i += 1
    joined = "\n\n".join("\n".join(b) for b in blocks)
    kept = [
        ln for ln in joined.split("\n")
        if not (ln.strip() and not ln.strip().startswith(("#", *_QUOTES))
                and not any(k in ln for k in _CODE_MARKERS) and _PROSE_LINE.match(ln.strip()))
    ]
    result = "\n".join(kept).strip()
    return result if _ANY_DEF.search(result) else ""


def _def_of(name: str) -> re.Pattern[str]:
    return re.compile(rf"^(\s*)def\s+{re.escape(name)}\s*\(")


def _indented_block(lines: list[str], start: int) -> list[str]:
    """Lines from `start` (a `def` line) while blank or indented deeper than it."""
    line = lines[start]
    deeper = " " * (len(line) - len(line.lstrip()) + 1)
    out = [line]
    for ln in lines[start + 1:]:
        if ln.strip() == "" or ln.startswith(deeper) or ln.startswith("\t"):
            out.append(ln)
        else:
            break
    return out


def extract_function(response: str, name: str) -> str:
    """The function `name` of a response (code_utils.py:172-205 `extract_specific_function`):
    from the first `def name(` line of the cleaned code to the first line that is neither blank
    nor indented deeper (another `def name(` before that cut starts over); "" when none."""
    if not response or not name:
        return ""
    out: list[str] = []
    inside = False
    deeper = " "
    target = _def_of(name)
    for line in clean_functions(response).split("\n"):
        if target.match(line):
            out, inside = [line], True
            deeper = " " * (len(line) - len(line.lstrip()) + 1)
        elif inside:
            if line.strip() == "" or line.startswith(deeper) or line.startswith("\t"):
                out.append(line)
            else:
                break
    return "\n".join(out).strip()


def _ast_function(text: str, name: str) -> str | None:
    """The source of the shallowest function `name` in `text` if `text` parses, else None."""
    tree, _ = parse_code(text)
    if tree is None:
        return None
    for node in ast.walk(tree):  # breadth first: a top-level function before a nested one
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            segment = ast.get_source_segment(text, node, padded=True)
            return textwrap.dedent(segment).strip() if segment else None
    return None


def extract_function_ast(response: str, name: str) -> str:
    """The function `name` as Python's parser delimits it (the `extraction="ast"` option): nested
    functions and the statements after them stay in. Fences are dropped as the paper does; if the
    whole response does not parse (prose around the code), each of the first
    `MAX_AST_CANDIDATES` `def name(` lines is tried with its indented block; when nothing
    parses, the paper's extraction decides (so a broken answer keeps the paper's levels)."""
    if not response or not name:
        return ""
    text = strip_fences(response)
    found = _ast_function(text, name)
    if found is None:
        lines = text.split("\n")
        target = _def_of(name)
        starts = [i for i, ln in enumerate(lines) if target.match(ln)][:MAX_AST_CANDIDATES]
        for i in starts:
            found = _ast_function(textwrap.dedent("\n".join(_indented_block(lines, i))), name)
            if found is not None:
                break
    return found if found is not None else extract_function(response, name)


def has_return(func: str) -> bool:
    """code_utils.py:217: the function's text matches `return\\s+`."""
    return _RETURN.search(func) is not None


def prompt_imports(prompt: str) -> str:
    """Import lines of the problem statement, deduplicated (code_utils.py:17-46)."""
    seen: list[str] = []
    for line in prompt.split("\n"):
        s = line.strip()
        if any(p.match(s) for p in _IMPORT_LINE) and s not in seen:
            seen.append(s)
    return "\n".join(seen)


# ---------------------------------------------------------------- the reward's static checks

def calls_aux(main_func: str) -> bool:
    """code_utils.py:326-347: main's text (comments and docstrings included) has `aux(`."""
    return bool(main_func) and _CALLS_AUX.search(main_func) is not None


def is_thin_wrapper(main_func: str) -> bool:
    """code_utils.py:350-428: after dropping blank lines, docstrings, comments and `def` lines,
    the body is empty, or one `return ...aux...` line, or `v = aux(...)` then `return v`.

    As in the paper's code, a line that starts with triple quotes and does not also end a
    docstring on that line opens one - including a docstring's lone closing quotes - so after a
    HumanEval-style docstring the whole rest of the body is skipped and the function counts as
    a wrapper (no +1.0)."""
    if not main_func:
        return False
    body: list[str] = []
    in_doc = False
    for line in main_func.split("\n"):
        s = line.strip()
        if not s:
            continue
        if s.startswith(_QUOTES):
            if not (s.endswith(s[:3]) and len(s) > 3):
                in_doc = True
            continue
        if in_doc:
            if any(q in s for q in _QUOTES):
                in_doc = False
            continue
        if s.startswith("#") or s.startswith("def "):
            continue
        body.append(s)
        if len(body) > 2:
            return False
    if not body:
        return True
    if len(body) == 1:
        return body[0].startswith("return ") and AUX_NAME in body[0]
    m = _ASSIGNED_AUX.search(body[0])
    return bool(m) and body[1] == f"return {m.group(1)}"


def ignored_aux_calls_paper(main_func: str) -> list[str]:
    """Lines the paper's deduction flags (code_utils.py:431-473
    `check_aux_call_without_assignment`): a stripped, non-comment line that is exactly `aux`,
    ONE whitespace character, `(`, ONE non-`)` character, `)` - the only one of its three "bad
    patterns" a stripped line can match."""
    if not main_func or AUX_NAME not in main_func:
        return []
    return [f"Line {n}: {line.strip()}" for n, line in enumerate(main_func.split("\n"), 1)
            if line.strip() and not line.strip().startswith("#")
            and _PAPER_IGNORED.fullmatch(line.strip())]


def ignored_aux_calls_ast(main_func: str) -> list[str]:
    """Calls of `aux` whose value is dropped: an expression statement, or assigned to a name that
    is never read afterwards. What the paper's feedback means by "called but misused"
    (level_feedback.py uses `check_aux_call_without_usage`, code_utils.py `AuxUsageAnalyzer`;
    that analyser decides "never read" before it has visited the later reads, so it flags
    almost every assignment - here reads anywhere after the assignment count). Code that does
    not parse has no such calls (the reward has stopped at its syntax level anyway)."""
    if not main_func:
        return []
    tree, _ = parse_code(main_func)
    if tree is None:
        return []
    parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
    last_load: dict[str, tuple[int, int]] = {}  # one pass: a per-call scan would be quadratic
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
            pos = (n.lineno, n.col_offset)
            if pos > last_load.get(n.id, (-1, -1)):
                last_load[n.id] = pos
    out: list[str] = []
    for n in ast.walk(tree):
        if not (isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == AUX_NAME):
            continue
        parent = parents.get(n)
        if isinstance(parent, ast.Expr):
            out.append(f"Line {n.lineno}: standalone call (not assigned)")
        elif isinstance(parent, ast.Assign):
            end = (parent.end_lineno or parent.lineno, parent.end_col_offset or 0)
            for t in parent.targets:
                if isinstance(t, ast.Name) and not last_load.get(t.id, (-1, -1)) > end:
                    out.append(f"Line {n.lineno}: assigned to {t.id} but never used")
    return sorted(out)
