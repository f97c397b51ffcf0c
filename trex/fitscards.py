"""Header cards parsed from a FITS file's bytes, whatever bytes they hold.

FITS headers are printable ASCII (bytes 32-126), but raw frames from the
field carry other bytes: an observer's name in latin-1 in a COMMENT, a
control character from a flaky acquisition program.  cfitsio (through
fitsio) silently turns some of them into ``?``, passes others through to
astropy (which refuses them) and reports others in error messages fitsio
cannot decode; trex therefore reads the header bytes of the image HDU itself.

:func:`parse_cards` replaces every byte outside 32-126 by ``?`` and notes it
in the header as a HISTORY card ``trex replaced non-ASCII byte 0xe9 in OBJECT
by '?'`` (``unprintable byte`` for control characters), so that the note
travels with the header (into ``frameinfo.header`` and the calibrated frame).
:func:`replaced_keywords` reads the notes back: :mod:`trex.header` refuses a
frame whose keywords *it reads* were changed and accepts one whose changed
cards are comments or keywords trex never looks at.  A card whose keyword
name itself holds such a byte cannot be trusted to be what it says: it is
dropped, with a note.
"""

from __future__ import annotations

import re
import warnings

from astropy.io import fits as afits
from astropy.io.fits.verify import VerifyError, VerifyWarning

CARD = 80
BLOCK = 2880

#: prefix of the HISTORY notes this module writes
NOTE = "trex replaced"

_PRINTABLE = bytes(range(32, 127))
_TO_QUESTION = bytes(b if 32 <= b <= 126 else 63 for b in range(256))
_KEYWORD = re.compile(r"^[A-Z0-9_-]*$")
_NOTE_RE = re.compile(r"^trex replaced ((?:non-ASCII|unprintable) byte 0x[0-9a-f]{2}) "
                      r"in (.+) by '\?'$")


class CardError(ValueError):
    """Header bytes that are not a FITS header at all (no END card, unparsable)."""


def _describe(byte: int) -> str:
    return f"{'non-ASCII' if byte > 127 else 'unprintable'} byte 0x{byte:02x}"


def header_bytes(raw: bytes) -> bytes:
    """The cards of ``raw`` up to and including END (raw starts at a header)."""
    for start in range(0, len(raw) - CARD + 1, CARD):
        if raw[start:start + 8] == b"END     ":
            return raw[:start + CARD]
    raise CardError(f"no END card in the {len(raw) // BLOCK} header blocks")


def parse_cards(raw: bytes) -> tuple[list[tuple[str, object, str]], list[str]]:
    """(keyword, value, comment) of every card of a header's bytes, and the notes.

    Bytes outside 32-126 become ``?`` and each changed card gives one note
    (see the module doc).  A value astropy cannot parse comes back as its
    text (e.g. ``'? 30.'``); an empty value as None.  Raises CardError when
    the bytes hold no END card or cannot be parsed as cards at all.
    """
    raw = header_bytes(raw)
    notes, texts = [], []
    for start in range(0, len(raw) - CARD, CARD):
        card = raw[start:start + CARD]
        clean = card.translate(_TO_QUESTION).decode("ascii")
        bad = card.translate(None, _PRINTABLE)
        name = clean[:8].rstrip()
        if bad and not _KEYWORD.match(name) and not clean.startswith("HIERARCH"):
            notes.append(f"trex dropped card {start // CARD + 1} {name!r}: "
                         f"{_describe(bad[0])} in its keyword")
            continue
        if bad:
            owner = name if name != "CONTINUE" else _last_keyword(texts)
            notes.append(f"{NOTE} {_describe(bad[0])} in {owner or 'a blank card'} by '?'")
        texts.append(clean)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        try:
            header = afits.Header.fromstring("".join(texts) + "END".ljust(CARD))
        except (VerifyError, ValueError) as err:
            raise CardError(f"unparsable header cards: {err}") from None
        return [_triple(card) for card in header.cards], notes


def _last_keyword(texts: list[str]) -> str:
    for text in reversed(texts):
        if text[:8].rstrip() not in ("", "CONTINUE"):
            return text[:8].rstrip()
    return ""


def _triple(card: afits.Card) -> tuple[str, object, str]:
    """(keyword, value, comment) of a card; the value's text when it does not parse."""
    try:
        value, comment = card.value, card.comment
    except (VerifyError, ValueError):
        text = card.image[10:] if card.image[8:10] == "= " else card.image[8:]
        value, _, comment = text.partition(" /")
        value = value.strip().strip("'").strip()
    if isinstance(value, afits.card.Undefined):
        value = None
    return card.keyword, value, str(comment or "").strip()


def replaced_keywords(header: afits.Header) -> dict[str, str]:
    """{keyword: 'non-ASCII byte 0x..'} of the cards :func:`parse_cards` changed."""
    out = {}
    for text in header.get("HISTORY", []):
        match = _NOTE_RE.match(str(text).strip())
        if match:
            out.setdefault(match.group(2), match.group(1))
    return out
