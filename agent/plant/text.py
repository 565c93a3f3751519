"""Text from the broker made safe for an operator's terminal.

Anyone allowed to publish under the watched prefix chooses the statuses, topic names (so the
node and machine names) and model ids that `harken watch` shows. Written raw, an escape
sequence in one of them would retitle the operator's window (``ESC]0;...BEL``), clear the
screen (``ESC[2J``), blink, recolour or move the cursor over other rows, and a rich markup tag
(``[/bold]``) would be parsed by the table. So every such string passes through ``safe``
before it reaches a renderer: C0 and C1 control characters, DEL and the Unicode format
characters that reorder or hide text (bidi overrides, zero-width joiners) are each replaced by
a visible ``?``, the result is cut to a length that fits a table cell, and the table gets it as
a plain ``rich.text.Text`` (never parsed as markup). docs/mqtt.md ("Watching from the plant
side") says what the view shows.
"""

from __future__ import annotations

import unicodedata

# characters that do something to a terminal or to how the text around them is displayed
_HIDDEN_CATEGORIES = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def safe(value: object, limit: int = 48) -> str:
    """``value`` as one line of at most ``limit`` visible characters, every control or
    format character replaced by ``?`` (a long text ends in ``…``)."""
    try:
        text = value if isinstance(value, str) else str(value)
    except ValueError:                    # an int of more digits than str() will write
        text = "?"
    cut = len(text) > limit
    if cut:
        text = text[:max(limit - 1, 0)]
    text = "".join("?" if unicodedata.category(c) in _HIDDEN_CATEGORIES else c for c in text)
    return text + "…" if cut else text


def visible(value: object, limit: int = 48):
    """``safe`` text as a rich ``Text``: shown as it is, never read as markup."""
    from rich.text import Text
    return Text(safe(value, limit))
