"""The manual page and the bash completion, generated from the argument parser.

Both are derived from ``build_parser()`` at run time, so they can never disagree with the
options the CLI accepts: ``vmkeep man | man -l -`` and
``source <(vmkeep completion bash)`` (or the file written to bash-completion's directory).
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date

from .commands.common import EXIT_CODES, EXIT_OK
from .launch import PASSPHRASE_ENV, REPO_ENV
from .secrets import NEW_PASSPHRASE_ENV, PASSWORD_ENV

# Options whose value is a path: the shell completes file names for them.
PATH_METAVARS = {"FILE", "DIR", "REPO", "IMAGE"}


@dataclass(frozen=True)
class Command:
    """A (sub)command: its words after ``vmkeep``, its parser, and its one-line help."""

    words: tuple[str, ...]
    parser: argparse.ArgumentParser
    help: str


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> Iterator[Command]:
    """Every command and subcommand, depth first, in the parser's order."""
    sub = _subparsers(parser)
    if sub is None:
        return
    helps = {choice.dest: choice.help or "" for choice in sub._choices_actions}
    for name, child in sub.choices.items():
        yield Command((*words, name), child, helps.get(name, ""))
        yield from commands(child, (*words, name))


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings]


def _takes_path(action: argparse.Action) -> bool:
    return action.nargs != 0 and str(action.metavar or "").upper() in PATH_METAVARS


# -- bash completion --------------------------------------------------------------------------


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion script: commands, subcommands, options, and file names where a path goes."""
    prog = parser.prog
    cases = []
    top_sub = _subparsers(parser)
    top_words = " ".join([*(top_sub.choices if top_sub else []), *_option_words(parser)])
    cases.append(f'        "") words={shlex.quote(top_words)} ;;')
    for command in commands(parser):
        sub = _subparsers(command.parser)
        words = [*(sub.choices if sub else []), *_option_words(command.parser)]
        cases.append(f"        {shlex.quote(' '.join(command.words))}) words={shlex.quote(' '.join(words))} ;;")
    path_options = sorted(
        {o for c in commands(parser) for a in _options(c.parser) if _takes_path(a) for o in a.option_strings}
    )
    value_options = sorted(
        {
            o
            for c in commands(parser)
            for a in _options(c.parser)
            if a.nargs != 0 and not _takes_path(a)
            for o in a.option_strings
        }
    )
    all_commands = sorted(" ".join(c.words) for c in commands(parser))
    function = "_" + re.sub(r"\W", "_", prog)
    return f"""# bash completion for {prog}, generated from its parser by '{prog} completion bash'
{function}() {{
    local cur prev command="" candidate word words i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    case "$prev" in
        {"|".join(path_options) or "--"}) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        {"|".join(value_options) or "--"}) COMPREPLY=(); return ;;
    esac
    # The command is the longest run of words after {prog} that names one: "key export".
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        [[ "$word" == -* ]] && continue
        if [[ -z "$command" ]]; then candidate="$word"; else candidate="$command $word"; fi
        if [[ "|{"|".join(all_commands)}|" == *"|$candidate|"* ]]; then command="$candidate"; fi
    done
    case "$command" in
{chr(10).join(cases)}
        *) words="" ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
        return
    fi
    local plain=""  # subcommands and choices: options only once a "-" is typed
    for word in $words; do [[ "$word" == -* ]] || plain="$plain $word"; done
    if [[ -n "$plain" ]]; then
        COMPREPLY=($(compgen -W "$plain" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -o filenames -F {function} {prog}
"""


def _option_words(parser: argparse.ArgumentParser) -> list[str]:
    """Long options, and the values a positional argument may take (``completion bash``)."""
    choices = [
        str(c)
        for a in parser._actions
        if not a.option_strings and a.choices and not isinstance(a, argparse._SubParsersAction)
        for c in a.choices
    ]
    options = [
        o for a in _options(parser) if a.help != argparse.SUPPRESS for o in a.option_strings if o.startswith("--")
    ]
    return choices + options


# -- manual page ------------------------------------------------------------------------------


def _roff(text: str) -> str:
    """Escape text for roff: backslashes, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.MULTILINE)


def _synopsis(command: Command, prog: str) -> str:
    usage = command.parser.format_usage().removeprefix("usage: ").strip()
    usage = " ".join(usage.split())
    return _roff(usage if usage.startswith(prog) else f"{prog} {usage}")


def _option_lines(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for action in _options(parser):
        if action.help == argparse.SUPPRESS or "-h" in action.option_strings:
            continue
        value = f" {action.metavar or action.dest.upper()}" if action.nargs != 0 else ""
        names = ", ".join(f"\\fB{_roff(o)}\\fR" for o in action.option_strings)
        lines += [".TP", f"{names}{_roff(value)}", _roff(action.help or "")]
    return lines


def man_page(parser: argparse.ArgumentParser, version: str, today: date | None = None) -> str:
    prog = parser.prog
    when = (today or date.today()).isoformat()
    out = [
        f'.TH {prog.upper()} 1 "{when}" "{prog} {_roff(version)}" "User Commands"',
        ".SH NAME",
        f"{prog} \\- {_roff(parser.description or '')}",
        ".SH SYNOPSIS",
        f"\\fB{prog}\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]",
        ".SH DESCRIPTION",
        _roff(parser.description or ""),
        "Every command has \\fB\\-\\-help\\fR; most take \\fB\\-\\-json\\fR for scripts.",
        ".SH OPTIONS",
        *_option_lines(parser),
        ".SH COMMANDS",
    ]
    for command in commands(parser):
        out += [
            f".SS {' '.join(command.words)}",
            f".B {_synopsis(command, prog)}",
            ".PP",
            _roff(command.parser.description or command.help),
            *_option_lines(command.parser),
        ]
    out += [".SH ENVIRONMENT"]
    for name, what in (
        (REPO_ENV, "the repository, when --repo is not given"),
        (PASSPHRASE_ENV, "the repository passphrase, when --passphrase-file is not given"),
        (NEW_PASSPHRASE_ENV, "the new passphrase of key passwd"),
        (PASSWORD_ENV, "the vCenter or ESXi password, when --password-file is not given"),
    ):
        out += [".TP", f"\\fB{name}\\fR", _roff(what)]
    out += [".SH EXIT STATUS", ".TP", f"\\fB{EXIT_OK}\\fR", "success"]
    for _cls, code, what in EXIT_CODES:
        out += [".TP", f"\\fB{code}\\fR", _roff(what)]
    out += [
        ".SH SECURITY",
        "Secrets are never taken on the command line: passphrases and passwords come from files, "
        "the environment, the OS keyring or a prompt.",
        ".SH SEE ALSO",
        "README.md, docs/DESIGN.md, docs/VSPHERE.md and docs/FORMAT.md in the vmkeep source.",
    ]
    return "\n".join(out) + "\n"
