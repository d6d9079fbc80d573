"""The paper's extraction against Python's parser on the 164 canonical HumanEval solutions.

The paper's `cleanup_code` (OpenMLRL/LLM_Collab_Code_Generation rewards/code_utils.py @11f24c3
:75-84, :107-113) starts a new block at every `def` line, nested ones too, and drops the outer
function's statements after a nested function. `cut_by_paper_extraction()` computes which
canonical solutions lose statements that way (docstrings aside); docs/paper-fidelity.md carries
that list between markers, and `test_paper_fidelity_lists_the_cut_solutions` fails when the two
differ. Regenerate the list with `python -m tests.tasks.test_coding_extraction`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from collm_serve.tasks import get_task
from collm_serve.tasks.coding import clean_functions, extract_function, extract_function_ast

TASK = get_task("coding")
DOC = Path(__file__).resolve().parents[2] / "docs" / "paper-fidelity.md"
BEGIN, END = "<!-- nested-def-cut:begin -->", "<!-- nested-def-cut:end -->"


def canonical_answer(problem) -> str:
    """What a main agent that writes the canonical solution answers: the entry point's `def`
    and docstring from the prompt, then the canonical body."""
    p = problem.payload
    m = re.search(rf"^def[ \t]+{re.escape(p['entry_point'])}[ \t]*\(", p["prompt"], re.M)
    return p["prompt"][m.start():] + p["canonical_solution"]


def _statements(func_src: str) -> str:
    """The function's AST without its docstring (the paper's prose filter may drop a docstring
    line; that changes nothing that runs; HumanEval/115 puts an import before it)."""
    fn = ast.parse(func_src).body[0]
    body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                                       and isinstance(s.value.value, str))]
    return ast.dump(ast.Module(body=body, type_ignores=[]))


def cut_by_paper_extraction() -> list[str]:
    """Problem ids whose canonical function the paper's extraction does not keep whole."""
    out = []
    for problem in TASK.all_problems():
        answer, entry = canonical_answer(problem), problem.payload["entry_point"]
        whole = _statements(extract_function_ast(answer, entry))
        try:
            paper = _statements(clean_functions(extract_function(answer, entry)))
        except SyntaxError:
            paper = None
        if paper != whole:
            out.append(problem.problem_id)
    return out


def doc_list() -> str:
    return "\n".join(f"- {pid}" for pid in cut_by_paper_extraction())


def test_ast_extraction_keeps_every_canonical_function_whole():
    for problem in TASK.all_problems():
        answer, entry = canonical_answer(problem), problem.payload["entry_point"]
        node = next(n for n in ast.parse(answer).body if getattr(n, "name", None) == entry)
        assert _statements(extract_function_ast(answer, entry)) == _statements(ast.unparse(node))


def test_paper_fidelity_lists_the_cut_solutions():
    text = DOC.read_text(encoding="utf-8")
    listed = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert listed == doc_list(), f"regenerate: python -m tests.tasks.test_coding_extraction\n{doc_list()}"


def test_nested_def_cut_and_the_ast_option():
    """HumanEval/39 (a nested `is_prime`): the paper's rule keeps the function only up to the
    nested function's end, so main has no return of its own; `extraction="ast"` keeps it."""
    problem = TASK.get_problem("HumanEval/39")
    answer = canonical_answer(problem)
    aux = "def aux(x):\n    return x\n"
    paper, _ = TASK.facts(problem, aux, answer)
    ast_facts, extra = get_task("coding", extraction="ast").facts(problem, aux, answer)
    assert "HumanEval/39" in cut_by_paper_extraction()
    assert ast_facts.main_defined and ast_facts.syntax_ok
    assert "return f[-1]" in extra["program"]
    paper_main = clean_functions(extract_function(answer, "prime_fib"))
    assert "return f[-1]" not in paper_main and paper.main_defined  # cut, yet "defined"


def test_ast_extraction_falls_back_to_the_papers_on_broken_code():
    broken = "Here it is:\ndef aux(x):\n    return (x\n"
    assert extract_function_ast(broken, "aux") == extract_function(broken, "aux") != ""
    prose = "Sure!\n```python\ndef aux(x):\n    def inner(y):\n        return y\n    return inner(x)\n```\nDone."
    assert extract_function_ast(prose, "aux").endswith("return inner(x)")


if __name__ == "__main__":
    print(f"{BEGIN}\n{doc_list()}\n{END}")
