"""Small modal screens: help for the current view, the ``:`` command line, the fault picker,
a runbook step's confirmation and a note for the incident log."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Button, DataTable, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from console.redact import redact
from console.runner import ConfirmRequest, Decision


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


class ConfirmDialog(ModalScreen[Decision]):
    """A runbook's decision: the question, the exact plan (command, diff, request), evidence.

    Cancel has the focus, as in k9s's destructive dialog: a stray enter declines. In a protected
    environment Confirm stays disabled until the target's name is typed exactly. The registry
    checks the confirmation again (digest, typed target, read-only): this dialog only asks.
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]  # noqa: RUF012
    DEFAULT_CSS = """
    ConfirmDialog { align: center middle; }
    ConfirmDialog > Vertical { width: 78; max-width: 100%; height: auto; max-height: 100%;
                               border: round $error; background: $surface; padding: 0 1; }
    ConfirmDialog #question { text-style: bold; }
    ConfirmDialog #plan { height: auto; max-height: 14; scrollbar-size-vertical: 1; }
    ConfirmDialog #typed { margin: 1 0 0 0; }
    ConfirmDialog .buttons { height: auto; margin-top: 1; align-horizontal: right; }
    ConfirmDialog Button { margin-left: 2; }
    """

    def __init__(
        self,
        request: ConfirmRequest,
        operator: str,
        environment: str,
        secrets: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.request = request
        self.operator = operator
        self.environment = environment
        self.secrets = secrets  # masked in what is shown, as the incident log masks them

    def compose(self) -> ComposeResult:
        request = self.request
        with Vertical():
            yield Label(Text(request.question), id="question")
            plan = request.plan
            lines = [*request.evidence]
            if plan is not None:
                lines = [plan.summary, *plan.detail.rstrip("\n").splitlines(), *lines]
                lines += [f"note: {note}" for note in plan.notes]
            with VerticalScroll(id="plan"):
                yield Static(Text(redact("\n".join(lines), known=self.secrets)))
            if request.protected:
                yield Label(
                    Text(f"{self.environment} is protected: type {request.target} to confirm")
                )
                yield Input(placeholder=request.target or "", id="typed", compact=True)
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel", compact=True)
                yield Button(
                    "Confirm",
                    id="confirm",
                    variant="error",
                    disabled=request.protected,
                    compact=True,
                )

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def _typed(self) -> str | None:
        if not self.request.protected:
            return None
        return self.query_one("#typed", Input).value.strip() or None

    def on_input_changed(self, event: Input.Changed) -> None:
        matches = event.value.strip() == self.request.target
        self.query_one("#confirm", Button).disabled = not matches

    def on_input_submitted(self, event: Input.Submitted) -> None:
        confirm = self.query_one("#confirm", Button)
        if not confirm.disabled:
            confirm.focus()  # the name typed: one more, deliberate enter confirms

    def on_button_pressed(self, event: Button.Pressed) -> None:
        confirmed = event.button.id == "confirm"
        self.dismiss(Decision(confirmed, self.operator, self._typed(), how="dialog"))

    def action_cancel(self) -> None:
        self.dismiss(Decision(False, self.operator, self._typed(), how="dialog"))


class NoteDialog(ModalScreen[str | None]):
    """A note for the incident log: enter adds it, esc drops it."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]  # noqa: RUF012
    DEFAULT_CSS = """
    NoteDialog { align: center middle; }
    NoteDialog > Vertical { width: 70; max-width: 100%; height: auto; border: round $accent;
                            background: $surface; padding: 0 1; }
    """

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(Text(f"Note for the incident log of {self.what} (esc cancels)"))
            yield Input(placeholder="what you saw or did")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)
