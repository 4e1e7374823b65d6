"""Two corrections to Typer 0.29's rich help screens, applied once when the app is built.

- On/off options are flags (``--json``, not ``--json true``), but the rich formatter prints
  a ``<bool>`` type after them, unlike Typer's own plain formatter (which skips the type
  of a flag). The type column of a flag is left empty here, as the plain formatter does.
- A required argument is written ``{file}`` on the usage line; here it is ``FILE``, the
  usual convention (optional ones stay ``[NAME]``).

Both patch private methods, so each checks that the method exists and the tests
(tests/test_cli_basics.py) read the real help output: a Typer upgrade that changes them
fails a test instead of silently showing the old text.
"""

from __future__ import annotations

from typing import Any


def install() -> None:
    """Patch Typer's option/argument classes (idempotent)."""
    from typer import core

    option, argument = core.TyperOption, core.TyperArgument
    if getattr(option, "_segsllm_patched", False):
        return
    if hasattr(option, "display_type_rich"):
        original = option.display_type_rich

        def display_type_rich(self: Any, ctx: Any) -> str | None:
            if getattr(self, "is_flag", False) and not getattr(self, "count", False):
                return None
            return original(self, ctx)

        option.display_type_rich = display_type_rich
    if hasattr(argument, "_usage_display_name"):

        def _usage_display_name(self: Any) -> str:
            name = self.display_name_raw if self.metavar is not None else self.display_name_raw.upper()
            name = name if self.required else f"[{name}]"
            return name + ("..." if self.nargs != 1 else "")

        argument._usage_display_name = _usage_display_name
    option._segsllm_patched = True
