"""Goal classification on a labelled set, and reading arguments from a goal's words."""

from __future__ import annotations

import pytest

from dendrite.planning import Intent, QueryType, classify
from dendrite.planning.arguments import extract_arguments, numbers_in
from dendrite.planning.semantic import GoalPart, split_goal

LABELLED: list[tuple[str, QueryType, Intent]] = [
    (
        "compare what README.md and DESIGN.md say about storage",
        QueryType.COMPARISON,
        Intent.TOOL_USE,
    ),
    ("Postgres versus SQLite for small teams", QueryType.COMPARISON, Intent.TOOL_USE),
    ("what are the differences between the two reports", QueryType.COMPARISON, Intent.TOOL_USE),
    ("contrast the Q1 and Q2 plans", QueryType.COMPARISON, Intent.TOOL_USE),
    ("which is faster, the old parser or the new one", QueryType.COMPARISON, Intent.TOOL_USE),
    ("how does option A differ from option B", QueryType.COMPARISON, Intent.TOOL_USE),
    ("calculate (3 + 4) * 12", QueryType.CALCULATION, Intent.TOOL_USE),
    ("what is 17 * 23", QueryType.CALCULATION, Intent.TOOL_USE),
    ("compute the square root of 1764", QueryType.CALCULATION, Intent.TOOL_USE),
    ("convert 12 miles to km", QueryType.CALCULATION, Intent.TOOL_USE),
    ("is 7919 a prime number", QueryType.CALCULATION, Intent.TOOL_USE),
    ("average of 3, 5 and 10", QueryType.CALCULATION, Intent.TOOL_USE),
    ("how much is 15% of 80", QueryType.CALCULATION, Intent.TOOL_USE),
    ("summarize the design document", QueryType.SUMMARY, Intent.TOOL_USE),
    ("give me a summary of notes.md", QueryType.SUMMARY, Intent.TOOL_USE),
    ("tl;dr of the incident report", QueryType.SUMMARY, Intent.TOOL_USE),
    ("what are the key points of the meeting notes", QueryType.SUMMARY, Intent.TOOL_USE),
    ("recap yesterday's standup", QueryType.SUMMARY, Intent.TOOL_USE),
    ("an overview of the storage chapter", QueryType.SUMMARY, Intent.TOOL_USE),
    ("search the docs for write-ahead logging", QueryType.SEARCH, Intent.TOOL_USE),
    ("find every mention of retries", QueryType.SEARCH, Intent.TOOL_USE),
    ("which documents talk about quarantine", QueryType.SEARCH, Intent.TOOL_USE),
    ("look for the word journal in my notes", QueryType.SEARCH, Intent.TOOL_USE),
    ("locate the section on migrations", QueryType.SEARCH, Intent.TOOL_USE),
    ("where is the retention policy described", QueryType.SEARCH, Intent.TOOL_USE),
    ("look up the price of the basic plan", QueryType.LOOKUP, Intent.TOOL_USE),
    ("read config.json", QueryType.LOOKUP, Intent.TOOL_USE),
    ("list all files in data", QueryType.LOOKUP, Intent.TOOL_USE),
    ("fetch the latest weather for Oslo", QueryType.LOOKUP, Intent.TOOL_USE),
    ("get the value of timeout in settings.json", QueryType.LOOKUP, Intent.TOOL_USE),
    ("who is the owner of the billing service", QueryType.LOOKUP, Intent.TOOL_USE),
    ("analyze the sales trends in sales.csv", QueryType.ANALYSIS, Intent.TOOL_USE),
    ("give me statistics on response times", QueryType.ANALYSIS, Intent.TOOL_USE),
    ("aggregate revenue grouped by region", QueryType.ANALYSIS, Intent.TOOL_USE),
    ("what are the keywords of this text", QueryType.ANALYSIS, Intent.TOOL_USE),
    ("how many words are in the abstract", QueryType.ANALYSIS, Intent.TOOL_USE),
    ("evaluate the correlation between price and demand", QueryType.ANALYSIS, Intent.TOOL_USE),
    ("translate this paragraph to French", QueryType.TRANSFORMATION, Intent.TOOL_USE),
    ("normalize the whitespace in this text", QueryType.TRANSFORMATION, Intent.TOOL_USE),
    ("extract all email addresses from the log", QueryType.TRANSFORMATION, Intent.TOOL_USE),
    ("reformat the table as CSV", QueryType.TRANSFORMATION, Intent.TOOL_USE),
    ("convert this text to uppercase", QueryType.TRANSFORMATION, Intent.TOOL_USE),
    ("parse the dates in the export", QueryType.TRANSFORMATION, Intent.TOOL_USE),
    ("write a poem about autumn", QueryType.GENERATION, Intent.GENERATIVE),
    ("draft an email to the team about the outage", QueryType.GENERATION, Intent.GENERATIVE),
    ("brainstorm names for a cat", QueryType.GENERATION, Intent.GENERATIVE),
    ("tell me a joke", QueryType.GENERATION, Intent.GENERATIVE),
    ("compose a haiku on rain", QueryType.GENERATION, Intent.GENERATIVE),
    ("suggest ideas for a team offsite", QueryType.GENERATION, Intent.GENERATIVE),
    ("write me a short story about a robot", QueryType.GENERATION, Intent.GENERATIVE),
]


def test_labelled_set_accuracy():
    wrong_type = []
    wrong_intent = []
    for goal, query_type, intent in LABELLED:
        got = classify(goal)
        if got.query_type is not query_type:
            wrong_type.append((goal, got.query_type.value, query_type.value))
        if got.intent is not intent:
            wrong_intent.append((goal, got.intent.value, intent.value))
    type_accuracy = 1 - len(wrong_type) / len(LABELLED)
    intent_accuracy = 1 - len(wrong_intent) / len(LABELLED)
    assert type_accuracy >= 0.9, wrong_type
    assert intent_accuracy >= 0.95, wrong_intent


def test_confidence_reflects_ambiguity():
    clear = classify("compare A versus B, the differences between them")
    mixed = classify("search and summarize the report")
    none = classify("hello there")
    assert clear.query_type_confidence == 1.0
    assert 0 < mixed.query_type_confidence < 1
    assert (none.intent, none.query_type, none.query_type_confidence) == (
        Intent.UNKNOWN,
        QueryType.UNKNOWN,
        0.0,
    )
    assert classify("").intent is Intent.UNKNOWN
    assert "comparison:compare" in clear.signals


def _schema(**props):
    return {"type": "object", "properties": props, "required": list(props)}


STR, NUM, INT = {"type": "string"}, {"type": "number"}, {"type": "integer"}


@pytest.mark.parametrize(
    ("goal", "schema", "expected"),
    [
        ("calculate (3 + 4) * 2 please", _schema(expression=STR), {"expression": "(3 + 4) * 2"}),
        ("what is sqrt(16) + 2**3", _schema(expression=STR), {"expression": "sqrt(16) + 2**3"}),
        # An exponent stays with its number: "1e3 + 1" was read as "3 + 1".
        ("calculate 2.5e-3 * 1000", _schema(expression=STR), {"expression": "2.5e-3 * 1000"}),
        ("calculate 1E2", _schema(expression=STR), {"expression": "1E2"}),
        ("calculate 2 * e", _schema(expression=STR), {"expression": "2 * e"}),
        ("take 1e3 items", _schema(n=NUM), {"n": 1000.0}),
        # Apostrophes within words quote nothing: the count between them is still read.
        ("what's the 5 newest posts in today's feed", _schema(count=INT), {"count": 5}),
        (
            "convert 5 km to miles",
            _schema(value=NUM, from_unit=STR, to_unit=STR),
            {"value": 5.0, "from_unit": "km", "to_unit": "miles"},
        ),
        ("is 97 prime?", _schema(n=INT), {"n": 97}),
        (
            "statistics of 1, 2, 3.5 and 4",
            _schema(values={"type": "array", "items": NUM}),
            {"values": [1, 2, 3.5, 4]},
        ),
        (
            "search the docs for write-ahead logging",
            _schema(query=STR),
            {"query": "write-ahead logging"},
        ),
        ("summarize README.md", _schema(name=STR), {"name": "README.md"}),
        (
            "compare what README.md and DESIGN.md say about storage",
            _schema(first=STR, second=STR, topic=STR),
            {"first": "README.md", "second": "DESIGN.md", "topic": "storage"},
        ),
        (
            "extract \"\\d+\" from 'order 66 and 42'",
            _schema(text=STR, pattern=STR),
            {"text": "order 66 and 42", "pattern": "\\d+"},
        ),
        (  # patterns choose first; the text takes the other passage, however long
            'extract the matches of "[0-9]+" from "a1 b22"',
            _schema(text=STR, pattern=STR),
            {"text": "a1 b22", "pattern": "[0-9]+"},
        ),
        (  # a number beside a parameter's word is that parameter's; none inside quotes
            'the first 3 matches of "[a-z]+" in "ab 9"',
            {
                "type": "object",
                "properties": {"text": STR, "pattern": STR, "group": INT, "max_matches": INT},
                "required": ["text", "pattern"],
            },
            {"text": "ab 9", "pattern": "[a-z]+", "max_matches": 3},
        ),
        (
            "show the detail as full",
            _schema(level={"type": "string", "enum": ["brief", "full"]}),
            {"level": "full"},
        ),
        ("events since 2026-01-31", _schema(since=STR), {"since": "2026-01-31"}),
        (
            "fetch https://example.org/a?b=1 now",
            _schema(url=STR),
            {"url": "https://example.org/a?b=1"},
        ),
    ],
)
def test_arguments_are_read_by_type_and_name(goal, schema, expected):
    extraction = extract_arguments(goal, schema)
    assert extraction.params == expected
    assert extraction.complete


@pytest.mark.parametrize(
    ("goal", "expression"),
    [
        ("calculate 7 times 6", "7 * 6"),
        ("calculate the square root of 144", "sqrt(144)"),
        ("calculate 15% of 200", "(15 / 100 * 200)"),
        ("calculate 10 divided by 4", "10 / 4"),
        ("calculate 3 \u00d7 4 \u00f7 2", "3 * 4 / 2"),
        ("calculate .5 * 4", ".5 * 4"),
        ("calculate 1,250 * 2", "1250 * 2"),
        ("what is max(1,250) plus 2 squared", "max(1,250) + (2) ** 2"),
        ("calculate 5", "5"),
    ],
)
def test_arithmetic_in_words_and_signs_is_the_calculators(goal, expression):
    """ "7 times 6" was read as "7", and the calculator answered a confident 7."""
    assert extract_arguments(goal, _schema(expression=STR)).params == {"expression": expression}


def test_a_lone_number_of_several_is_no_expression_and_lists_are_not_thousands():
    assert extract_arguments("calculate 7 by 6", _schema(expression=STR)).missing == ["expression"]
    values = {"type": "array", "items": NUM}
    assert extract_arguments("mean of 1,2,3,4", _schema(values=values)).params == {
        "values": [1, 2, 3, 4]
    }
    assert numbers_in("1,500 m and 10,20,30 and 1,250,000") == [1500, 10, 20, 30, 1250000]
    units = _schema(value=NUM, from_unit=STR, to_unit=STR)
    assert extract_arguments("convert 1,500 m to km", units).params == {
        "value": 1500.0,
        "from_unit": "m",
        "to_unit": "km",
    }


def test_missing_required_arguments_are_reported_and_given_values_win():
    extraction = extract_arguments("convert it", _schema(value=NUM, from_unit=STR, to_unit=STR))
    assert extraction.missing == ["value", "from_unit", "to_unit"]
    given = extract_arguments("is 97 prime", _schema(n=INT), given={"n": 5})
    assert given.params == {"n": 5}


def test_goals_split_into_parallel_and_sequential_parts():
    parts = split_goal("calculate 2+2 and count the words in 'a b c'; then summarize notes.md")
    assert [(p.text, p.after_previous) for p in parts] == [
        ("calculate 2+2", False),
        ("count the words in 'a b c'", False),
        ("summarize notes.md", True),
    ]
    assert [p.text for p in split_goal("compare README.md and DESIGN.md")] == [
        "compare README.md and DESIGN.md"
    ]
    # A part of punctuation alone asks for nothing (it reached retrieval as "": ValueError).
    assert split_goal("search for apples; ...") == [GoalPart("search for apples", False)]
    assert [(p.text, p.after_previous) for p in split_goal("..., then count 'a b'")] == [
        ("count 'a b'", False)
    ]


def test_a_cue_is_a_whole_word_in_every_alternative():
    # "history" holds "story" and "joker" holds "joke": neither asks for writing.
    for goal in (
        "find important wars in European history during the 19th century",
        "what are the odds of drawing a heart card from a deck without joker?",
    ):
        got = classify(goal)
        assert got.intent is not Intent.GENERATIVE, (goal, got.signals)
        assert not any(s.startswith("generation:") for s in got.signals), got.signals
    assert classify("tell me a joke").intent is Intent.GENERATIVE
