"""Tables that fit the terminal without breaking an id: columns are hidden before anything is cut.

Rich shrinks every column evenly when a table is wider than the terminal, which prints an id one letter per line.
Here each column says whether its text may fold onto more lines and how important it is. Columns that stay on one
line (ids, states, times) always get their full width; folding columns (details, names) share what is left, each
at least a few characters; when even that does not fit, the least important columns are left out and a note under
the table names them. Columns marked as keys are never left out: if they alone are wider than the terminal, the
table is printed at its full width and the terminal wraps the lines, so an id is never cut. ``--wide`` prints every
column at its natural width whatever the terminal's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from rich import box
from rich.cells import cell_len
from rich.console import Console, JustifyMethod
from rich.table import Table
from rich.text import Text

FOLD_MIN_WIDTH: Final = 8
"""Narrowest a folding column is made (unless its whole text is narrower)."""

Cell = str | Text


@dataclass(frozen=True)
class Column:
    """One column of a fitted table."""

    header: str
    rank: int = 0
    """0: a key column, never left out; otherwise higher ranks are left out first when the terminal is too narrow."""
    fold: bool = False
    """The text may fold onto several lines; otherwise it stays on one line at its full width."""
    justify: JustifyMethod = "left"
    min_width: int = FOLD_MIN_WIDTH
    """For a folding column: the narrowest it is made."""


@dataclass
class FittedTable:
    """A table laid out for one width, and the columns it left out."""

    table: Table
    width: int
    """The width the table needs: the terminal's, or more when its key columns alone are wider."""
    title: Cell = ""
    """Printed above the table at the terminal's width, so a long id in it wraps as a whole word."""
    hidden: list[str] = field(default_factory=list)

    def print(self, console: Console) -> None:
        """Print the title, the table, then which columns were left out and how to see them."""
        if self.title:
            plain = self.title.plain if isinstance(self.title, Text) else self.title
            longest_word = max((cell_len(word) for word in plain.split()), default=0)
            # Rich folds a word wider than the terminal; printed as one line, the terminal wraps it and it stays whole.
            console.print(self.title, soft_wrap=longest_word > console.width)
        if self.width > console.width:
            console.width = self.width
        console.print(self.table)
        if self.hidden:
            console.print(
                Text(f"not shown at this width: {', '.join(self.hidden)} (--wide shows every column)", style="dim")
            )


def text_width(cell: Cell) -> int:
    """How many terminal cells the widest line of `cell` takes."""
    plain = cell.plain if isinstance(cell, Text) else cell
    return max((cell_len(line) for line in plain.split("\n")), default=0)


def _chrome(columns: int) -> int:
    """Terminal cells a table takes besides its text: one space each side of an inner border, and the border."""
    return max(0, 3 * (columns - 1))


def fit_table(
    columns: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
    width: int,
    *,
    wide: bool = False,
    title: Cell = "",
    row_styles: Sequence[str | None] = (),
) -> FittedTable:
    """Lay out `rows` under `columns` for a terminal `width` cells wide (every column at full width if `wide`).

    `row_styles` holds a style for each row (None: none); `title` is printed above the table.
    """
    natural = [
        max([text_width(column.header), *(text_width(row[index]) for row in rows)])
        for index, column in enumerate(columns)
    ]
    narrowest = [
        min(natural[index], max(column.min_width, 1)) if column.fold else natural[index]
        for index, column in enumerate(columns)
    ]
    shown = list(range(len(columns)))

    def needed(indexes: list[int], sizes: list[int]) -> int:
        return sum(sizes[index] for index in indexes) + _chrome(len(indexes))

    hidden: list[int] = []
    if not wide:
        while needed(shown, narrowest) > width:
            optional = [index for index in shown if columns[index].rank > 0]
            if not optional:
                break
            least = max(optional, key=lambda index: (columns[index].rank, index))
            shown.remove(least)
            hidden.append(least)
    sizes = _share_width(columns, shown, natural, narrowest, width if not wide else needed(shown, natural))
    table = Table(box=box.HEAVY_HEAD, show_edge=False, pad_edge=False)
    for index in shown:
        column = columns[index]
        table.add_column(
            column.header,
            justify=column.justify,
            no_wrap=not column.fold,
            overflow="fold",
            width=sizes[index],
        )
    for number, row in enumerate(rows):
        style = row_styles[number] if number < len(row_styles) else None
        table.add_row(*(row[index] for index in shown), style=style)
    return FittedTable(
        table=table,
        width=max(width, needed(shown, sizes)),
        title=title,
        hidden=[columns[index].header for index in sorted(hidden)],
    )


def _share_width(
    columns: Sequence[Column], shown: list[int], natural: list[int], narrowest: list[int], width: int
) -> list[int]:
    """Each column's text width: one-line columns their full width, folding ones share the rest (0 if not shown)."""
    sizes = [narrowest[index] if index in shown else 0 for index in range(len(columns))]
    spare = width - sum(sizes) - _chrome(len(shown))
    folding = [index for index in shown if columns[index].fold and natural[index] > sizes[index]]
    # Hand out the spare width one cell at a time to the narrowest folding column still below its natural width, so
    # short texts (a step's name) get their whole width before long ones (a detail) take the rest.
    while spare > 0 and folding:
        index = min(folding, key=lambda candidate: (sizes[candidate], candidate))
        sizes[index] += 1
        spare -= 1
        if sizes[index] >= natural[index]:
            folding.remove(index)
    return sizes
