"""Class folder names compared as a person reads them.

``café`` can be spelled two ways in Unicode: one code point for ``é`` (NFC, what most Linux tools
write) or ``e`` plus a combining accent (NFD, what macOS has written). The two look identical but are
different folder names, so a plain comparison says "'café' is not in ['café']". Here:

- train class folders that differ only in normal form (or only by case) are refused, naming both
  spellings with their code points escaped, since there is no telling which one the user meant;
- a val/test folder (or a checkpoint's or the config's class) that matches a class only after NFC
  normalisation is used as that class, with a warning: it is the same text, the spelling was chosen by
  a file system or a copy tool rather than the user, and the match is unambiguous because train
  classes are distinct after normalisation;
- a folder that matches a class only by case is an error that names the reason: on most file systems
  case is the user's choice and ``Cat``/``cat`` may be two different things.
"""

from __future__ import annotations

import logging
import unicodedata
from collections import defaultdict
from pathlib import Path

from imgclf.errors import DataError

log = logging.getLogger(__name__)


def nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def spelled(name: str) -> str:
    """``name`` quoted, every non-ASCII character escaped: two spellings that look alike differ visibly."""
    return "'" + "".join(c if c.isascii() and c.isprintable() else _escape(c) for c in name) + "'"


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def normal_form(name: str) -> str:
    """``NFC``, ``NFD`` (both for plain ASCII: reported as NFC), or ``mixed``."""
    if unicodedata.is_normalized("NFC", name):
        return "NFC"
    return "NFD" if unicodedata.is_normalized("NFD", name) else "mixed"


def check_distinct(names: list[str], folder: Path) -> None:
    """Refuse class folders in ``folder`` whose names differ only in Unicode normal form or by case."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name in names:
        groups[nfc(name).casefold()].append(name)
    clashes = [group for group in groups.values() if len(group) > 1]
    if not clashes:
        return
    forms = [g for g in clashes if len({nfc(n) for n in g}) == 1]
    cases = [g for g in clashes if g not in forms]
    problems = []
    if forms:
        problems.append(
            "differ only in Unicode normal form (they look the same, but are different folders): "
            + "; ".join(" vs ".join(f"{spelled(n)} ({normal_form(n)})" for n in g) for g in forms)
        )
    if cases:
        problems.append(f"differ only by case: {cases}")
    raise DataError(
        f"class folders in {folder} " + " and ".join(problems) + "; rename or merge them into one folder per class"
    )


def match(
    names: list[str], classes: list[str], where: str, kind: str = "train class"
) -> tuple[dict[str, int], list[str]]:
    """Each of ``names`` (class folders found in ``where``) that is one of ``classes`` -> its index in
    ``classes``, matched exactly or after NFC normalisation (with a warning); and the names that are not
    a class, each followed by the reason when it is a near miss (only by case)."""
    exact = {name: i for i, name in enumerate(classes)}
    by_form = {nfc(name): i for i, name in enumerate(classes)}
    by_case = {nfc(name).casefold(): name for name in classes}
    index: dict[str, int] = {}
    unknown: list[str] = []
    for name in names:
        if name in exact:
            index[name] = exact[name]
        elif nfc(name) in by_form:
            index[name] = by_form[nfc(name)]
            known = classes[index[name]]
            log.warning(
                "class folder %s in %s is the %s %s written in another Unicode normal form (%s, as "
                "macOS writes names, vs %s): used as that class",
                spelled(name),
                where,
                kind,
                spelled(known),
                normal_form(name),
                normal_form(known),
            )
        elif nfc(name).casefold() in by_case:
            unknown.append(
                f"{spelled(name)} differs from the {kind} {spelled(by_case[nfc(name).casefold()])} "
                "only by case: rename the folder"
            )
        else:
            unknown.append(spelled(name))
    return index, unknown


# How the keys of a display-name mapping (predict.py --category-names) are read.
KEY_READINGS = ("auto", "name", "index")


def keyed_names(mapping: dict[str, str], classes: list[str], keys: str, what: str) -> dict[str, str]:
    """Class name -> display name from ``mapping``, whose keys are class names or class indices.

    ``keys="name"``: every key is a class name; ``"index"``: every key is a position in ``classes`` (0-based);
    ``"auto"``: keys that are class names are read as names, and keys that are all indices, none of them a
    class name, as indices. A mapping that reads both ways with different results (numeric class folders
    ``1, 10, 2``: key ``"1"`` is class ``1`` by name but class ``10`` by index) is refused under ``auto``,
    since either guess shows wrong names without a word; ``what`` names the mapping in the messages.
    """
    by_name = {c: mapping[c] for c in classes if c in mapping}
    indices = all(k.isascii() and k.isdigit() and int(k) < len(classes) for k in mapping)
    by_index = {classes[int(k)]: v for k, v in mapping.items()} if indices else {}
    shown = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")
    if keys == "name":
        chosen = by_name
    elif keys == "index":
        if not indices:
            bad = [k for k in mapping if not (k.isascii() and k.isdigit() and int(k) < len(classes))]
            raise DataError(
                f"{what}: read by index, but the keys {bad[:5]} are not class indices 0..{len(classes) - 1}"
            )
        chosen = by_index
    elif by_name and by_index and by_name != by_index:
        differ = [k for k in sorted(mapping, key=int) if classes[int(k)] != k]  # not empty: the readings differ
        key = next((k for k in differ if k in by_name), differ[0])
        by_name_is = f"class '{key}'" if key in by_name else "no class"
        raise DataError(
            f"{what}: its keys are class names and class indices at once, and the two readings differ "
            f"(key '{key}' is {by_name_is} by name, class '{classes[int(key)]}' by index in the class order "
            f"{shown}); say which with --category-keys name or --category-keys index"
        )
    else:
        chosen = by_name or by_index
    if not chosen:
        raise DataError(f"{what}: no key is one of the classes ({shown}) or a class index")
    return chosen
