"""Multiple-choice sets: the shipped capability set's composition, both file layouts, file:line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from traitlab.data.multiple_choice import (
    LETTERS,
    list_choice_sets,
    load_choice_set,
    resolve_choice_set,
)
from traitlab.errors import ConfigError, DataError

ROW = {"question": "What is 2 + 2?", "A": "3", "B": "4", "C": "5", "D": "22", "answer": "B"}


def jsonl(path: Path, *rows: object) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(DataError) as e:
        load_choice_set(path=path)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------------------ the shipped set


def test_starter_capability_set_composition():
    s = load_choice_set("starter")
    comp = s.composition()
    assert len(s.items) >= 150
    assert comp["category"] == {"arithmetic": 40, "common_sense": 40, "general_knowledge": 40, "reading": 40}
    assert comp["answer"] == {"A": 40, "B": 40, "C": 40, "D": 40}
    # Balanced within each category too, so no category's accuracy can be bought by a letter preference.
    for cat in s.categories():
        letters = [i.answer_letter for i in s.items if i.category == cat]
        assert {L: letters.count(L) for L in LETTERS} == {"A": 10, "B": 10, "C": 10, "D": 10}
    questions = [i.question for i in s.items]
    assert len(set(questions)) == len(questions)
    reading = [i for i in s.items if i.category == "reading"]
    assert all("\n\n" in i.question for i in reading)  # passage, blank line, question
    assert list_choice_sets() == ["starter"]


def test_items_keep_their_line_and_letter(tmp_path):
    p = jsonl(tmp_path / "s.jsonl", ROW, "", {**ROW, "answer": " d ", "subject": "maths"})
    s = load_choice_set(path=p)
    assert [(i.line, i.answer, i.answer_letter, i.category) for i in s.items] == [(1, 1, "B", ""), (3, 3, "D", "maths")]
    assert s.items[0].options == ("3", "4", "5", "22") and s.name == "s"


# ------------------------------------------------------------------------------------------- jsonl


@pytest.mark.parametrize("row, expected", [
    ({k: v for k, v in ROW.items() if k != "C"}, r"s\.jsonl:2: missing key\(s\) 'C'"),
    ({**ROW, "anwser": "B"}, r"s\.jsonl:2: unknown key 'anwser'; expected the keys question, A, B, C, D, answer"),
    ({**ROW, "answer": "E"}, r"s\.jsonl:2: \"answer\" is 'E'; expected one of the letters A, B, C, D"),
    ({**ROW, "answer": 1}, r"s\.jsonl:2: \"answer\" is 1; expected one of the letters"),
    ({**ROW, "A": "  "}, r"s\.jsonl:2: \"A\" is empty"),
    ({**ROW, "D": None}, r"s\.jsonl:2: \"D\" must be text, got null"),
    ({**ROW, "C": "four", "B": "Four"}, r"s\.jsonl:2: options B and C are the same text"),
    ({**ROW, "category": "x", "subject": "y"}, r"s\.jsonl:2: both \"category\" and \"subject\""),
    ([1, 2], r"s\.jsonl:2: expected a JSON object"),
    ('{"question": "q",', r"s\.jsonl:2: invalid JSON"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, row, expected):
    p = jsonl(tmp_path / "s.jsonl", ROW, row)
    with pytest.raises(DataError, match=expected):
        load_choice_set(path=p)


def test_numbers_as_options_are_text(tmp_path):
    p = jsonl(tmp_path / "n.jsonl", {**ROW, "A": 3, "B": 4, "C": 5.5, "D": 22})
    assert load_choice_set(path=p).items[0].options == ("3", "4", "5.5", "22")


def test_empty_files_fail(tmp_path):
    assert "empty file" in error_of(jsonl(tmp_path / "e.jsonl", ""))
    (tmp_path / "blank.csv").write_text("\n\n")
    assert "empty file" in error_of(tmp_path / "blank.csv")
    (tmp_path / "header.csv").write_text("question,A,B,C,D,answer\n")
    assert "no questions" in error_of(tmp_path / "header.csv")


# --------------------------------------------------------------------------------------------- csv


def test_mmlu_csv_without_header_with_quotes_and_multiline_fields(tmp_path):
    p = tmp_path / "mmlu.csv"
    p.write_text('What is 2 + 2?,3,4,5,22,B\n'
                 '"Read this:\n\nA, B and C met. Who met?",A and B,"A, B and C",Nobody,Only C,B\n'
                 '\n'
                 'Pick Z,X,Y,Z,W,c\n', encoding="utf-8")
    s = load_choice_set(path=p)
    assert [i.line for i in s.items] == [1, 2, 6]
    assert s.items[1].question == "Read this:\n\nA, B and C met. Who met?" and s.items[1].options[1] == "A, B and C"
    assert s.items[2].answer_letter == "C"


def test_csv_error_after_a_multiline_field_names_the_right_line(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text('"two\nlines",a,b,c,d,A\nq,a,b,c,d\n', encoding="utf-8")
    assert error_of(p).startswith(f"{p}:3: 5 fields; expected 6 (question, A, B, C, D, answer)")


def test_csv_with_header_in_any_order_and_a_subject_column(tmp_path):
    p = tmp_path / "h.csv"
    p.write_text("Answer,Question,a,b,c,d,Subject\nA,Is ice cold?,yes,no,never,hot,physics\n"
                 "E,Is fire cold?,yes,no,never,cold,physics\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"h\.csv:3: \"answer\" is 'E'"):
        load_choice_set(path=p)
    p.write_text("Answer,Question,a,b,c,d,Subject\nA,Is ice cold?,yes,no,never,hot,physics\n", encoding="utf-8")
    (item,) = load_choice_set(path=p).items
    assert (item.question, item.options, item.answer, item.category, item.line) == \
        ("Is ice cold?", ("yes", "no", "never", "hot"), 0, "physics", 2)


@pytest.mark.parametrize("header, expected", [
    ("question,A,B,C,D,answer,notes", r":1: unknown column 'notes' in the header"),
    ("question,A,B,C,answer", r":1: header lacks the column\(s\) D"),
    ("question,A,B,C,D,answer,A", r":1: column 'A' appears twice"),
])
def test_csv_header_errors(tmp_path, header, expected):
    p = tmp_path / "h.csv"
    p.write_text(header + "\nq,a,b,c,d,A\n", encoding="utf-8")
    with pytest.raises(DataError, match=expected):
        load_choice_set(path=p)


def test_unterminated_quote_is_a_data_error(tmp_path):
    p = tmp_path / "q.csv"
    p.write_text('q,a,b,c,d,A\n"open,a,b,c,d,A\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"q\.csv:\d+: malformed csv"):
        load_choice_set(path=p)


# ---------------------------------------------------------------------------------------- resolve


def test_resolve_by_name_and_by_path(tmp_path):
    jsonl(tmp_path / "mine.jsonl", ROW)
    assert resolve_choice_set("mine", root=tmp_path) == (tmp_path / "mine.jsonl").resolve()
    assert resolve_choice_set("mine.jsonl", root=tmp_path) == (tmp_path / "mine.jsonl").resolve()
    with pytest.raises(ConfigError, match=r"no multiple-choice set 'other'.*available: mine"):
        resolve_choice_set("other", root=tmp_path)
    (tmp_path / "mine.csv").write_text("q,a,b,c,d,A\n")
    with pytest.raises(ConfigError, match=r"exists as both mine\.jsonl and mine\.csv"):
        resolve_choice_set("mine", root=tmp_path)
    with pytest.raises(ConfigError, match=r"capability\.path: .* is not a file"):
        resolve_choice_set(path=tmp_path / "missing.csv")
    with pytest.raises(ConfigError, match=r"no '\.\.'"):
        resolve_choice_set("../x", root=tmp_path)
    with pytest.raises(ConfigError, match="exactly one"):
        resolve_choice_set()


def test_a_name_cannot_leave_the_sets_directory_through_a_symlink(tmp_path):
    root, outside = tmp_path / "capability", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    jsonl(outside / "secret.jsonl", ROW)
    (root / "link.jsonl").symlink_to(outside / "secret.jsonl")
    with pytest.raises(ConfigError, match=r"capability\.set: 'link' leads outside .*use capability\.path="):
        resolve_choice_set("link", root=root)
