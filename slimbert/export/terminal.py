"""Tables for a terminal of any width (80 columns is most terminals and CI logs): laid out when they are printed,
never with a figure or a name cut short. rich only, so that importing it costs nothing."""

from __future__ import annotations

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text


class Fitted:
    """A rich Table laid out for the width it is printed at, without cutting a word: each column gets at least its
    longest word (a number or a name is one word) and the spare width unwraps the cells of the columns that lack
    least first, then the headers (a wrapped cell costs a line a row, a wrapped header one line). When the longest
    words do not fit side by side with rules between the columns, they are separated by a space; when even that is
    too wide, each row is printed as a block of `column  value` lines."""

    def __init__(self, table: Table):
        self.table = table
        self.layout = table.box, table.padding, table.show_edge

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table, cols = self.table, self.table.columns
        table.box, table.padding, table.show_edge = self.layout
        cells = [[Measurement.get(console, options, c) for c in (col.header, *col.cells)] for col in cols]
        widths = [max(m.minimum for m in ms) for ms in cells]

        def room() -> int:  # rich's overhead: each cell's padding, a rule between columns and the outer edges
            rules = 0 if table.box is None else len(cols) + 1 if table.show_edge else len(cols) - 1
            return options.max_width - (table.padding[1] + table.padding[3]) * len(cols) - rules

        if sum(widths) > room():
            table.box, table.padding, table.show_edge = box.SIMPLE_HEAD, (0, 0, 0, 0), False
        if sum(widths) > room():
            yield from self.stacked()
            return
        cell_widths = [max((m.maximum for m in ms[1:]), default=0) for ms in cells]
        for full in (cell_widths, [max(m.maximum for m in ms) for ms in cells]):
            for i in sorted(range(len(cols)), key=lambda i: full[i] - widths[i]):
                widths[i] += max(0, min(full[i] - widths[i], room() - sum(widths)))
        for col, w in zip(cols, widths):
            col.width = w
        yield table

    def stacked(self) -> RenderResult:
        if self.table.title:
            yield Text(str(self.table.title), style="italic")
        cells = [list(col.cells) for col in self.table.columns]
        for i in range(self.table.row_count):
            grid = Table.grid(padding=(0, 2))
            grid.add_column(style="bold", no_wrap=True)
            grid.add_column()
            for col, values in zip(self.table.columns, cells):
                grid.add_row(col.header, values[i])
            yield grid
            yield Text()
