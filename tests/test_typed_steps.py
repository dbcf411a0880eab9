"""`ctx.step` is typed: mypy checks a step's arguments against its function and infers the awaited result.

mypy runs on tests/typing/typed_steps.py, whose wrong calls carry the error mypy must report on their line.
"""

from __future__ import annotations

import re
from pathlib import Path

from mypy import api

SAMPLE = Path(__file__).parent / "typing" / "typed_steps.py"


def test_mypy_flags_wrong_step_arguments_and_infers_results() -> None:
    stdout, stderr, _ = api.run(["--strict", "--no-error-summary", "--hide-error-context", str(SAMPLE)])
    assert not stderr
    source = SAMPLE.read_text().splitlines()
    errors: dict[int, list[str]] = {}
    revealed: dict[str, str] = {}
    for line in stdout.splitlines():
        found = re.match(r".*typed_steps\.py:(\d+): (error|note): (.*)", line)
        assert found, line
        number, kind, message = int(found[1]), found[2], found[3]
        if kind == "error":
            errors.setdefault(number, []).append(message.rsplit("  [", 1)[1].rstrip("]"))
        elif message.startswith("Revealed type is"):
            revealed[source[number - 1].strip()] = message
    assert revealed == {
        "reveal_type(payment)": 'Revealed type is "dict[str, str]"',
        "reveal_type(words)": 'Revealed type is "int"',
        "reveal_type(retried)": 'Revealed type is "Any"',  # a call naming an option is not inferred
    }
    marker = "  # wrong: "
    expected = {
        number: text.split(marker, 1)[1].split(", ") for number, text in enumerate(source, start=1) if marker in text
    }
    assert len(expected) == 3
    assert errors == expected
    assert '"Callable[[dict[str, float], str], Coroutine[Any, Any, dict[str, str]]]", "str"' in stdout
