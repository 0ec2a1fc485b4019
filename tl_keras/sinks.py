"""Untrusted text escaped for the place it ends up: one function per sink.

Names and messages that come from data, model files, flags or TensorFlow (which quotes the
files it reads) reach a terminal, report.md or a CSV file. Each sink has its own dangerous
characters (OWASP's log-injection rule): escape sequences and carriage returns rewrite a
terminal, brackets and pipes make Markdown links and table cells, a leading `=` makes a
spreadsheet formula. Every such string goes through the function for its sink just before
it is written.
"""

import unicodedata

# Unicode categories shown escaped on a terminal: controls (C0, DEL, C1: ESC, CR, BEL, CSI),
# format characters (bidi overrides that reorder the line), surrogates and unassigned or
# private-use code points, and line and paragraph separators.
_TERMINAL_ESCAPED_CATEGORIES = ("C", "Zl", "Zp")
# Characters that could make Markdown text a link, image, HTML tag, table cell, code or emphasis.
_MARKDOWN_SPECIALS = frozenset("\\`*_[]()!<>|~#")
# What starts a spreadsheet formula (OWASP CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(char: str) -> str:
  if char in _SHORT:
    return _SHORT[char]
  code = ord(char)
  return (
    f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
  )


def terminal(text) -> str:
  """`text` safe to print on a terminal: every control or format character (ESC, CR, BEL, C1
  controls such as CSI U+009B, bidi overrides, line separators, newlines too) shown escaped
  as `\\x1b` or `\\u202e`; everything else as it is. Join lines before, if they are wanted."""
  text = str(text)
  if text.isprintable():  # the common case: nothing to escape (spaces are printable)
    return text
  return "".join(
    _escaped(c) if unicodedata.category(c).startswith(_TERMINAL_ESCAPED_CATEGORIES) else c
    for c in text
  )


def terminal_lines(text) -> str:
  """`text` for a terminal keeping its line breaks (`\\n`), each line escaped by `terminal`."""
  return "\n".join(terminal(line) for line in str(text).split("\n"))


def markdown(text) -> str:
  """`text` as literal Markdown: a backslash before each of _MARKDOWN_SPECIALS, control
  characters as \\uXXXX. For every string from data or model files (class names, paths)."""
  return "".join(
    f"\\u{ord(c):04x}"
    if unicodedata.category(c).startswith("C")
    else "\\" + c
    if c in _MARKDOWN_SPECIALS
    else c
    for c in str(text)
  )


def csv_cell(text) -> str:
  """`text` safe for a spreadsheet (OWASP CSV injection): a leading =, +, -, @, tab or
  carriage return, which would start a formula, gets a single quote before it."""
  text = str(text)
  return "'" + text if text.startswith(_FORMULA_STARTS) else text
