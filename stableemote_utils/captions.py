"""How a name becomes a training caption: the caption template and the trigger word.

``--caption-template "An emoji of {}"`` (or ``{name}``) puts the name (an emoji's name,
or the text of a ``.txt`` caption file) into the template; ``--trigger-word sks`` puts a
word in front of every caption, ``"sks, An emoji of red heart"``, so that the adapter
learns to tie the new style to that word. Training captions and validation prompts go
through the same function, :func:`make_caption`.
"""

from __future__ import annotations

import string

from stableemote_utils.errors import StableEmoteError

# The placeholders a template may use for the name: ``{}`` or ``{name}``.
NAME_FIELDS = ("", "name")


def check_caption_template(template: object, option: str = "--caption-template") -> None:
    """A text with the name's place marked by ``{}`` or ``{name}``, and no other field.

    Raises:
        StableEmoteError: one line saying what is wrong and what a template looks like.
    """
    example = 'e.g. "An emoji of {}"'
    if not isinstance(template, str):
        raise StableEmoteError(f"{option} must be a text with {{}} for the name, {example}.")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:  # an unmatched brace
        raise StableEmoteError(f"{option} {template!r}: {err}; write {{{{ for a brace.") from None
    if not fields or any(f not in NAME_FIELDS for f in fields):
        raise StableEmoteError(
            f"{option} {template!r} has no '{{}}' placeholder for the name (or has another "
            f"field); use {{}} or {{name}} where the name goes, {example}."
        )


def make_caption(name: str, template: str, trigger_word: str | None = None) -> str:
    """``template`` with ``name`` in it, behind ``trigger_word`` if there is one.

    >>> make_caption("red heart", "An emoji of {}", "sks")
    'sks, An emoji of red heart'
    """
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    caption = template.format(*[name] * fields.count(""), name=name)
    return f"{trigger_word}, {caption}" if trigger_word else caption
