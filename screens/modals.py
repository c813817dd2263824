"""Small modal screens: help for the current view, the ``:`` command line, the fault picker."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import DataTable, Input, Label, OptionList
from textual.widgets.option_list import Option


class HelpScreen(ModalScreen[None]):
    """``?``: the keys that work in the view it was opened from."""

    BINDINGS = [  # noqa: RUF012
        Binding("escape,q,question_mark", "dismiss", "Close"),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical { width: 64; max-height: 90%; height: auto; border: round $accent;
                            background: $surface; padding: 0 1; }
    HelpScreen DataTable { height: auto; max-height: 18; scrollbar-size-vertical: 1; }
    """

    def __init__(self, view: str, keys: Sequence[tuple[str, str]]) -> None:
        super().__init__()
        self.view = view
        self.keys = keys

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Keys in {self.view} (esc closes)")
            table: DataTable[str] = DataTable(cursor_type="none", show_header=False)
            table.add_columns("key", "action")
            for key, description in self.keys:
                table.add_row(key, description)
            yield table


class CommandLine(ModalScreen[str | None]):
    """``:``: type a view name (k9s style); tab completes, esc cancels."""

    BINDINGS = [  # noqa: RUF012
        Binding("escape", "dismiss(None)", "Cancel"),
        Binding("tab", "complete", "Complete"),
    ]
    DEFAULT_CSS = """
    CommandLine { align: center bottom; }
    CommandLine > Input { width: 100%; dock: bottom; margin-bottom: 1; }
    """

    def __init__(self, commands: Sequence[str]) -> None:
        super().__init__()
        self.commands = list(commands)

    def compose(self) -> ComposeResult:
        yield Input(
            placeholder=":" + " | ".join(self.commands),
            suggester=SuggestFromList(self.commands, case_sensitive=False),
        )

    def action_complete(self) -> None:
        # Input takes its grey suggestion on right-arrow at the end of the text; tab does both.
        command = self.query_one(Input)
        command.action_end()
        command.action_cursor_right()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip().lstrip(":"))


class FaultPicker(ModalScreen[str | None]):
    """Demo fleet only: choose a fault and its target, or heal everything."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]  # noqa: RUF012
    DEFAULT_CSS = """
    FaultPicker { align: center middle; }
    FaultPicker > Vertical { width: 70; height: auto; border: round $warning;
                             background: $surface; padding: 0 1; }
    /* The box is the frame: no focus border of its own (its ▊▔▁▎ glyphs would frame the list
       twice), so the labels get two more columns and the list two more rows. */
    FaultPicker OptionList { height: auto; max-height: 16; scrollbar-size-vertical: 1; }
    FaultPicker OptionList, FaultPicker OptionList:focus { border: none; }
    """

    def __init__(self, choices: Sequence[tuple[str, str]]) -> None:
        super().__init__()
        self.choices = choices

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Inject a fault into the demo fleet (esc cancels)")
            yield OptionList(*(Option(label, id=choice) for choice, label in self.choices))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)
