"""What one row may put into Redis: the same rule in streaming, rebuild, ``verify`` and the
API's PostgreSQL fallback, so no single row can make them disagree or stop the projector.

* A **member** is ranked only when its text has at most ``MAX_MEMBER`` code points (the
  longest id the API accepts in a URL); a longer one is treated like a NULL member.
* A **label** (display name) has its control characters (C0, DEL, C1) and bidirectional
  embedding, override and isolate characters removed, then is cut to ``MAX_LABEL`` code
  points. ``clean_label`` does it in Python (the stream), ``clean_label_sql`` in SQL (the
  rebuild, ``verify`` and the fallback read labels through it).
"""

from __future__ import annotations

import re

from psycopg import sql

MAX_MEMBER = 200
MAX_LABEL = 64

# U+0000-U+001F, U+007F-U+009F, U+202A-U+202E (embeddings, overrides), U+2066-U+2069
# (isolates). PostgreSQL's text never holds U+0000, so the SQL class starts at U+0001.
_STRIP = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_STRIP_SQL = "[\\u0001-\\u001f\\u007f-\\u009f\\u202a-\\u202e\\u2066-\\u2069]"


def clean_label(label: str) -> str:
    """The label as it is stored and served."""
    return _STRIP.sub("", label)[:MAX_LABEL]


def clean_label_sql(expression: sql.Composable) -> sql.Composable:
    """``clean_label`` of a text expression, in SQL (NULL stays NULL)."""
    return sql.SQL("left(regexp_replace({}, {}, '', 'g'), {})").format(
        expression, sql.Literal(_STRIP_SQL), sql.Literal(MAX_LABEL)
    )


def ranked_member(member: str) -> bool:
    """Whether a member's text may be ranked (see the module docstring)."""
    return len(member) <= MAX_MEMBER


def ranked_member_sql(column: sql.Composable) -> sql.Composable:
    """The SQL condition ``ranked_member`` on a member column (NULL is not ranked)."""
    return sql.SQL("({c} IS NOT NULL AND char_length({c}::text) <= {n})").format(
        c=column, n=sql.Literal(MAX_MEMBER)
    )
