"""Errors: one base class, with subclasses that say whose fault it was."""

from __future__ import annotations

from collections.abc import Iterable


class GeneratorError(Exception):
    """Base of every error the generator reports to its user.

    Each error carries one or more messages; `main()` prints each as an
    ``error:`` line, followed by the optional hint.
    """

    def __init__(self, messages: str | Iterable[str], hint: str | None = None) -> None:
        self.messages = [messages] if isinstance(messages, str) else list(messages)
        self.hint = hint
        self.warnings: list[str] = []  # the spec's warnings, shown before the errors
        super().__init__("; ".join(self.messages))


class SpecError(GeneratorError):
    """cluster.yaml is malformed or inconsistent (the user's spec)."""


class MaterialError(GeneratorError):
    """An input file is wrong: the etcd bundle, an imported CA, or existing PKI state."""


class TemplateError(GeneratorError):
    """A template failed to render (a bug in the templates, not the spec)."""


class IsoError(GeneratorError):
    """The seed ISO could not be built."""


class OutputError(GeneratorError):
    """The output directory could not be read or written."""


def printable(text: str) -> str:
    """One line of text: a hostile value quoted in a message cannot start a line of its own."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
