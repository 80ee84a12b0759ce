"""Task generators: answers sit where `answer_spans` says, only inside their needles, the
full context recalls them, and a seed fixes the task. No model is loaded."""

from __future__ import annotations

import random
import re

import pytest

from ilre_engine.calibration.tasks import (
    ESSAY_QUESTIONS,
    PARAPHRASES,
    TASK_FAMILIES,
    essays,
    insert_at_depth,
    needle_task,
)

HAYSTACKS = {"short": essays()[:17_000], "long": essays()[:134_000]}
DEPTHS = (0.0, 0.05, 0.5, 0.95, 1.0)


def _without_needles(task):
    """The context with each needle and the space after it cut out again."""
    context = task.context
    for start, end in sorted(task.needle_spans, reverse=True):
        assert context[end] == " "
        context = context[:start] + context[end + 1 :]
    return context


@pytest.mark.parametrize("family", sorted(TASK_FAMILIES))
@pytest.mark.parametrize("size", sorted(HAYSTACKS))
def test_answers_sit_at_their_spans_inside_needles(family, size):
    text = HAYSTACKS[size]
    for seed in range(4):
        for depth in DEPTHS:
            task = TASK_FAMILIES[family](text, depth, random.Random(seed))
            assert task.family == family
            assert task.recalled(task.context)
            assert len(task.answer_spans) == len(task.answers)
            for answer, (start, end) in zip(task.answers, task.answer_spans, strict=True):
                assert task.context[start:end] == answer
            if family == "essay_qa":
                assert task.context == text and not task.needle_spans
                continue
            assert _without_needles(task) == text
            for start, end in task.answer_spans:
                assert any(a <= start and end <= b for a, b in task.needle_spans)
            needles = task.needle_spans
            for answer in task.answers:
                for match in re.finditer(re.escape(answer), task.context):
                    assert any(a <= match.start() and match.end() <= b for a, b in needles)


@pytest.mark.parametrize("family", sorted(TASK_FAMILIES))
def test_a_seed_fixes_the_task(family):
    text = HAYSTACKS["short"]
    tasks = [TASK_FAMILIES[family](text, 0.3, random.Random(seed)) for seed in (7, 7, 8)]
    assert tasks[0] == tasks[1]
    if family != "essay_qa":  # the depth picks the question; the seed only breaks ties
        assert tasks[0] != tasks[2]


@pytest.mark.parametrize("family", sorted(set(TASK_FAMILIES) - {"essay_qa"}))
def test_the_first_needle_sits_at_the_depth(family):
    text = HAYSTACKS["long"]
    for depth in (0.1, 0.5, 0.9):
        task = TASK_FAMILIES[family](text, depth, random.Random(0))
        assert abs(task.needle_spans[0][0] / len(task.context) - depth) < 0.02


def test_needle_task_is_insert_at_depth():
    text = HAYSTACKS["short"]
    task = needle_task(text, 0.5, random.Random(0))
    (start, end), answer = task.needle_spans[0], task.answers[0]
    needle = task.context[start:end]
    assert needle.endswith(f" is {answer}.")
    assert task.context == insert_at_depth(text, needle, 0.5)


def test_essay_answers_occur_once_and_questions_paraphrase():
    corpus = essays()
    for question, answer in ESSAY_QUESTIONS:
        assert corpus.count(answer) == 1, answer
        assert answer.lower() not in question.lower()
    assert len(ESSAY_QUESTIONS) >= 10


def test_paraphrased_questions_share_no_content_word_with_their_needles():
    stop = {"the", "a", "an", "to", "of", "in", "on", "at", "by", "for", "is", "was", "her"}
    for needle, question in PARAPHRASES:
        words = {w for w in re.findall(r"[a-z]+", needle.lower()) if w not in stop}
        asked = {w for w in re.findall(r"[a-z]+", question.lower()) if w not in stop}
        assert not words & asked, (needle, words & asked)


def test_essay_qa_follows_depth():
    text = HAYSTACKS["long"]
    early = TASK_FAMILIES["essay_qa"](text, 0.0, random.Random(0))
    late = TASK_FAMILIES["essay_qa"](text, 1.0, random.Random(0))
    assert early.depth < 0.05 < 0.8 < late.depth
