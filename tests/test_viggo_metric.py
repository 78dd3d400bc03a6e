"""Table-driven tests of ViGGO meaning-representation metrics (bakeoff.evaluate.viggo)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bakeoff.errors import EvaluationError
from bakeoff.evaluate.viggo import mr_match, parse_mr, slot_scores

ROOT = Path(__file__).resolve().parents[1]
GOLD = "inform(name[Portal 2], genres[puzzle, platformer], rating[excellent])"


@pytest.mark.parametrize(
    "text,expected",
    [
        (
            GOLD,
            (
                "inform",
                Counter({("name", "Portal 2"): 1, ("genres", "puzzle, platformer"): 1, ("rating", "excellent"): 1}),
            ),
        ),
        ("  request_attribute(platforms[])\n", ("request_attribute", Counter({("platforms", ""): 1}))),
        ("confirm( name [ Halo ] ,rating[good] )", ("confirm", Counter({("name", "Halo"): 1, ("rating", "good"): 1}))),
        ("inform(name[A [remastered] edition])", ("inform", Counter({("name", "A [remastered] edition"): 1}))),
        ("inform(name[Tom (2016)])", ("inform", Counter({("name", "Tom (2016)"): 1}))),
        ("inform(genres[rpg], genres[rpg])", ("inform", Counter({("genres", "rpg"): 2}))),
        ("request()", ("request", Counter())),
        ("", None),
        ("(name[X])", None),  # empty act
        ("inform name[X]", None),  # no parentheses
        ("inform(name[X]", None),  # unclosed parenthesis
        ("inform(name[X)", None),  # unbalanced bracket
        ("inform(name[X]])", None),
        ("inform(name[X]) and more", None),  # trailing garbage
        ("inform(name[X]) (y)", None),
        ("inform(name[X],)", None),  # trailing comma
        ("inform(name[X] rating[good])", None),  # missing comma
        ("inform(name X)", None),
        ("inform([X])", None),  # empty attribute
        ("Sure! inform(name[X])", None),
    ],
)
def test_parse_mr(text, expected):
    assert parse_mr(text) == expected


@pytest.mark.parametrize(
    "pred,expected",
    [
        (GOLD, True),
        ("inform(rating[excellent], name[Portal 2], genres[puzzle, platformer])", True),  # attribute order ignored
        ("  inform( name[ Portal 2 ],genres[puzzle, platformer] , rating[excellent])  ", True),  # trimming
        ("inform(name[Portal 2], genres[platformer, puzzle], rating[excellent])", False),  # value is a string
        ("inform(name[portal 2], genres[puzzle, platformer], rating[excellent])", False),  # case-sensitive
        ("Inform(name[Portal 2], genres[puzzle, platformer], rating[excellent])", False),  # act case-sensitive
        ("confirm(name[Portal 2], genres[puzzle, platformer], rating[excellent])", False),  # other act
        ("inform(name[Portal 2], genres[puzzle], genres[platformer], rating[excellent])", False),  # not split
        ("inform(name[Portal 2], rating[excellent])", False),  # missing slot
        ("inform(name[Portal 2], genres[puzzle, platformer], rating[excellent], rating[excellent])", False),
        ("inform(name[Portal 2], genres[puzzle, platformer], rating[excellent]", False),  # malformed
        ("", False),
    ],
)
def test_mr_match(pred, expected):
    assert mr_match(GOLD, pred) is expected


@pytest.mark.parametrize("gold", ["", "inform(name[X]", "inform(name[X]) junk"])
def test_malformed_gold_raises(gold):
    with pytest.raises(EvaluationError, match="malformed gold"):
        mr_match(gold, "inform(name[X])")
    with pytest.raises(EvaluationError, match="malformed gold"):
        slot_scores(gold, "inform(name[X])")


@pytest.mark.parametrize(
    "gold,pred,expected",
    [
        (GOLD, GOLD, (1.0, 1.0, 1.0)),
        (GOLD, "confirm(name[Portal 2], genres[puzzle, platformer], rating[excellent])", (1.0, 1.0, 1.0)),  # no act
        (GOLD, "inform(name[Portal 2], rating[excellent])", (1.0, 2 / 3, 0.8)),
        (GOLD, "inform(name[Portal 2], rating[poor], esrb[E])", (1 / 3, 1 / 3, 1 / 3)),
        (GOLD, "inform(name[Portal 2], genres[puzzle], genres[platformer], rating[excellent])", (0.5, 2 / 3, 4 / 7)),
        ("inform(genres[rpg], genres[rpg])", "inform(genres[rpg])", (1.0, 0.5, 2 / 3)),  # multiset
        ("inform(genres[rpg])", "inform(genres[rpg], genres[rpg])", (0.5, 1.0, 2 / 3)),
        (GOLD, "inform(name[Portal 2]", (0.0, 0.0, 0.0)),  # malformed pred
        (GOLD, "request()", (0.0, 0.0, 0.0)),  # empty pred, non-empty gold
        ("request()", "request(name[X])", (0.0, 0.0, 0.0)),  # empty gold, non-empty pred
        ("request()", "request()", (1.0, 1.0, 1.0)),  # both empty
        ("request_attribute(platforms[])", "request_attribute(platforms[ ])", (1.0, 1.0, 1.0)),
    ],
)
def test_slot_scores(gold, pred, expected):
    assert slot_scores(gold, pred) == pytest.approx(expected)


def test_shipped_fixture_mrs_parse_and_match_themselves():
    rows = [
        json.loads(line)
        for line in (ROOT / "experiments" / "data" / "viggo.jsonl").read_text().splitlines()
        if line.strip()
    ]
    assert rows
    for row in rows:
        mr = row["meaning_representation"]
        parsed = parse_mr(mr)
        assert parsed is not None and sum(parsed[1].values()) >= 1, mr
        assert mr_match(mr, mr), mr
        assert slot_scores(mr, mr) == (1.0, 1.0, 1.0)
