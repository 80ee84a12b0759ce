"""Task generators: answers sit where `answer_spans` says, only inside their needles, the
full context recalls them, and a seed fixes the task; then what each family of
`hard_tasks` promises. No model is loaded."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from ilre_engine.calibration.families import ALL_FAMILIES
from ilre_engine.calibration.hard_tasks import (
    AGGREGATES,
    HARD_FAMILIES,
    LONG_VALUES,
    PARAPHRASED_FACTS,
    PROSE_QUESTIONS,
    SPLIT_FACTS,
    content_words,
    spell_number,
)
from ilre_engine.calibration.spread_tasks import (
    FOUNDED,
    KEYED_PARAGRAPHS,
    LIST_KINDS,
    MOVES,
    ROLE_BANKS,
    SPREAD_FAMILIES,
    STORY_BANKS,
    SURNAMES,
    TOWNS,
)
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
PASSAGE_FAMILIES = {"essay_qa", "prose_qa"}
"""Families that ask about the essays themselves and insert nothing."""


def _without_needles(task):
    """The context with each needle and the space after it cut out again."""
    context = task.context
    for start, end in sorted(task.needle_spans, reverse=True):
        assert context[end] == " "
        context = context[:start] + context[end + 1 :]
    return context


@pytest.mark.parametrize("family", sorted(ALL_FAMILIES))
@pytest.mark.parametrize("size", sorted(HAYSTACKS))
def test_answers_sit_at_their_spans_inside_needles(family, size):
    text = HAYSTACKS[size]
    for seed in range(4):
        for depth in DEPTHS:
            task = ALL_FAMILIES[family](text, depth, random.Random(seed))
            assert task.family == family
            assert task.recalled(task.context)
            assert len(task.answer_spans) == len(task.answers)
            for answer, (start, end) in zip(task.answers, task.answer_spans, strict=True):
                assert task.context[start:end] == answer
            if family in PASSAGE_FAMILIES:
                assert task.context == text and not task.needle_spans
                continue
            assert _without_needles(task) == text
            for start, end in task.answer_spans:
                assert any(a <= start and end <= b for a, b in task.needle_spans)
            needles = task.needle_spans
            for answer in task.answers:
                for match in re.finditer(re.escape(answer), task.context):
                    assert any(a <= match.start() and match.end() <= b for a, b in needles)


@pytest.mark.parametrize("family", sorted(ALL_FAMILIES))
def test_a_seed_fixes_the_task(family):
    text = HAYSTACKS["short"]
    tasks = [ALL_FAMILIES[family](text, 0.3, random.Random(seed)) for seed in (7, 7, 8)]
    assert tasks[0] == tasks[1]
    if family not in PASSAGE_FAMILIES:  # the depth picks the question; the seed only breaks ties
        assert tasks[0] != tasks[2]


@pytest.mark.parametrize("family", sorted(set(ALL_FAMILIES) - PASSAGE_FAMILIES))
def test_the_first_needle_sits_at_the_depth(family):
    text = HAYSTACKS["long"]
    for depth in (0.1, 0.5, 0.9):
        task = ALL_FAMILIES[family](text, depth, random.Random(0))
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


def test_the_registries_merge_without_changing_the_published_families():
    names = [*TASK_FAMILIES, *HARD_FAMILIES, *SPREAD_FAMILIES]
    assert len(set(names)) == len(names)
    assert ALL_FAMILIES == {**TASK_FAMILIES, **HARD_FAMILIES, **SPREAD_FAMILIES}
    assert len(TASK_FAMILIES) == 9


# -- hard_tasks --------------------------------------------------------------------------------

BENCHMARK_HAYSTACKS = {4000: 16_000, 8000: 32_000, 16000: 64_000, 32000: 128_000}
"""Model tokens -> characters of the essays, a little under the Gemma tokenizer's prefixes of
4k, 8k, 16k and 32k tokens (16.8k, 33.2k, 66.6k and 134.0k characters)."""
SAMPLES = 10


def _count(task, answer):
    return len(re.findall(re.escape(answer), task.context))


def _expected_count(task, answer):
    """How often an answer is meant to occur: a chain's variable is named by its own
    assignment and by the next link's; everything else once."""
    if task.family == "long_chain" and re.fullmatch(r"[A-Z]{5}", answer):
        return 1 if f"VAR {answer} hold" in task.query else 2
    return 1


@pytest.mark.parametrize("family", sorted(HARD_FAMILIES))
def test_hard_families_at_benchmark_lengths_and_depths(family):
    """The quality benchmark's cells: 10 samples at depths (i + 0.5) / 10, 4k to 32k tokens."""
    for tokens, chars in BENCHMARK_HAYSTACKS.items():
        text = essays()[:chars]
        for sample in range(SAMPLES):
            depth = (sample + 0.5) / SAMPLES
            rng = random.Random(f"0-{family}-{tokens}-{sample}")
            task = HARD_FAMILIES[family](text, depth, rng)
            for answer, (start, end) in zip(task.answers, task.answer_spans, strict=True):
                assert task.context[start:end] == answer
                assert _count(task, answer) == _expected_count(task, answer), (answer, task)
                asked = f"VAR {answer} hold" in task.query  # the chain's last variable
                assert asked or answer.lower() not in task.query.lower()
            if family == "prose_qa":
                assert abs(task.depth - depth) < 0.12, (tokens, depth, task.depth)
                continue
            assert _without_needles(task) == text
            for start, end in task.needle_spans:
                needle = task.context[start:end]
                assert needle.endswith((".", "?")) and needle == needle.strip()
            assert abs(task.needle_spans[0][0] / len(task.context) - depth) < 0.05


@pytest.mark.parametrize("family", sorted(set(HARD_FAMILIES) - PASSAGE_FAMILIES))
def test_hard_values_differ_across_seeds(family):
    text = HAYSTACKS["short"]
    answers = [HARD_FAMILIES[family](text, 0.5, random.Random(seed)).answers for seed in range(10)]
    assert len(set(answers)) >= 8, answers


def _fill(template, filled, slot):
    """The value of `slot` that makes `template` read `filled` (None if none does; any other
    slot of `template` matches anything)."""
    pattern = re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?P<{m.group(1)}>.+?)", re.escape(template))
    match = re.fullmatch(pattern, filled)
    return match.group(slot) if match else None


def test_long_values_are_long_unbroken_strings_of_every_kind():
    text = HAYSTACKS["short"]
    kinds = set()
    for seed in range(40):
        task = HARD_FAMILIES["long_value"](text, 0.5, random.Random(seed))
        (answer,) = task.answers
        assert len(answer) >= 20 and not re.search(r"\s", answer), answer
        assert len(task.needle_spans) == 2  # one distractor of the same kind
        first, other = (task.context[a:b] for a, b in task.needle_spans)
        for kind, (needle, question, _) in LONG_VALUES.items():
            key = _fill(question, task.query, "key")
            if key is not None:
                kinds.add(kind)
                assert first == needle.format(key=key, value=answer)
                assert other.startswith(needle.split("{key}")[0]) and key not in other
    assert kinds == set(LONG_VALUES)


def test_number_words():
    assert spell_number(7) == "seven"
    assert spell_number(41) == "forty-one"
    assert spell_number(90) == "ninety"
    assert spell_number(237) == "two hundred and thirty-seven"
    assert spell_number(300) == "three hundred"
    text = HAYSTACKS["short"]
    for seed in range(20):
        task = HARD_FAMILIES["number_words"](text, 0.5, random.Random(seed))
        (answer,) = task.answers
        assert re.fullmatch(r"[a-z]+([ ,-]+[a-z]+)*", answer), answer
        assert len(task.needle_spans) == 3
        assert not re.search(r"\d", task.query)
        needles = [task.context[a:b] for a, b in task.needle_spans]
        # the distractors have the needle's form: they differ in the key (or place) and value
        assert len({n.split(" ")[0] for n in needles}) == 1
        assert all(answer not in n for n in needles[1:])


def test_content_words_stem_and_drop_function_words():
    assert content_words("The keepers were tending the beacons.") == {"keep", "tend", "beacon"}
    assert content_words("keeper") & content_words("Keepers'")


def test_paraphrased_facts_share_no_content_word_with_their_questions():
    assert len(PARAPHRASED_FACTS) >= 20
    for fact, question, values in PARAPHRASED_FACTS:
        assert len(values) >= 3
        for value in values:
            shared = content_words(fact.format(value=value)) & content_words(question)
            assert not shared, (fact, value, shared)
    text = HAYSTACKS["long"]
    questions = set()
    for seed in range(30):
        task = HARD_FAMILIES["paraphrase_fact"](text, 0.5, random.Random(seed))
        needle = task.context[slice(*task.needle_spans[0])]
        assert not content_words(needle) & content_words(task.query)
        questions.add(task.query)
    assert len(questions) >= 10


def test_split_facts_sit_in_two_adjacent_sentences_linked_by_a_pronoun():
    text = HAYSTACKS["long"]
    for seed in range(20):
        task = HARD_FAMILIES["split_fact"](text, 0.4, random.Random(seed))
        (answer,) = task.answers
        (a0, b0), (a1, b1), *others = task.needle_spans
        assert a1 == b0 + 1 and len(others) == 2  # adjacent; a distractor pair elsewhere
        first, second = task.context[a0:b0], task.context[a1:b1]
        (name,) = {_fill(t[2], task.query, "name") for t in SPLIT_FACTS} - {None}
        assert name in first and name not in second and answer in second
        assert second.split()[0] in ("He", "She")
        distractor = task.context[slice(*others[0])]
        assert name not in distractor and distractor.split()[-3:] == first.split()[-3:]


def test_aggregate_counts_ask_for_every_mention_at_one_place():
    text = HAYSTACKS["long"]
    for seed in range(20):
        task = HARD_FAMILIES["aggregate_count"](text, 0.3, random.Random(seed))
        (mention, other_event, place) = next(
            (t[0], t[1], _fill(t[2], task.query, "place"))
            for t in AGGREGATES
            if _fill(t[2], task.query, "place")
        )
        needles = [task.context[a:b] for a, b in task.needle_spans]
        at_place = [n for n in needles if _fill(mention, n, "place") == place]
        assert 3 <= len(task.answers) == len(at_place) <= 6
        assert needles[: len(at_place)] == at_place  # the asked mentions come first
        distractors = needles[len(at_place) :]
        assert 2 <= len(distractors) <= 4
        assert _fill(other_event, distractors[0], "place") == place  # other event, same place
        assert _fill(mention, distractors[1], "place") not in (None, place)  # elsewhere
        assert all(any(answer in n for n in at_place) for answer in task.answers)


def test_long_chains_are_whole_chains_among_distractor_chains():
    text = HAYSTACKS["long"]
    for seed in range(20):
        task = HARD_FAMILIES["long_chain"](text, 0.5, random.Random(seed))
        value, *names = task.answers
        assert (
            4 <= len(names) <= 6
            and task.query == f"What number does VAR {names[-1]} hold in the end?"
        )
        needles = [task.context[a:b] for a, b in task.needle_spans]
        chain = [f"VAR {names[0]} = {value}."]
        chain += [f"VAR {b} = VAR {a}." for a, b in itertools.pairwise(names)]
        assert needles[: len(chain)] == chain
        distractors = needles[len(chain) :]
        assert 8 <= len(distractors) <= 12
        assert not any(name in d for d in distractors for name in names)
        assert sum(d.split(" = ")[1][0].isdigit() for d in distractors) == 2


def test_prose_answers_occur_once_and_are_new():
    corpus = essays()
    assert len(PROSE_QUESTIONS) >= 30
    old = {answer for _, answer in ESSAY_QUESTIONS}
    positions = []
    for question, answer in PROSE_QUESTIONS:
        assert corpus.count(answer) == 1, answer
        assert answer.lower() not in question.lower()
        assert answer not in old and "\n" not in answer
        positions.append(corpus.find(answer))
    assert positions == sorted(positions)
    for tokens, chars in BENCHMARK_HAYSTACKS.items():  # several answers in every prefix
        inside = sum(0 <= p < chars for p in positions)
        assert inside >= {4000: 10, 8000: 17, 16000: 27, 32000: 40}[tokens], (tokens, inside)


def test_prose_qa_follows_depth():
    text = HAYSTACKS["long"]
    early = HARD_FAMILIES["prose_qa"](text, 0.0, random.Random(0))
    late = HARD_FAMILIES["prose_qa"](text, 1.0, random.Random(0))
    assert early.depth < 0.05 < 0.9 < late.depth


# -- spread_tasks ------------------------------------------------------------------------------


def _benchmark_tasks(family):
    """The quality benchmark's cells of `family` at 4k to 32k tokens: 10 samples at depths
    (i + 0.5) / 10, with the benchmark's seeds."""
    for tokens, chars in BENCHMARK_HAYSTACKS.items():
        text = essays()[:chars]
        for sample in range(SAMPLES):
            rng = random.Random(f"0-{family}-{tokens}-{sample}")
            yield (
                text,
                (sample + 0.5) / SAMPLES,
                SPREAD_FAMILIES[family](text, (sample + 0.5) / SAMPLES, rng),
            )


@pytest.mark.parametrize("family", sorted(SPREAD_FAMILIES))
def test_spread_families_at_benchmark_lengths_and_depths(family):
    for text, depth, task in _benchmark_tasks(family):
        assert _without_needles(task) == text
        for answer, (start, end) in zip(task.answers, task.answer_spans, strict=True):
            assert task.context[start:end] == answer
            assert _count(task, answer) == 1, (answer, task.query)
        for start, end in task.needle_spans:
            needle = task.context[start:end]
            assert needle.endswith(".") and needle == needle.strip()
        first = task.needle_spans[0][0]  # where it was inserted into the haystack:
        first -= sum(b + 1 - a for a, b in task.needle_spans if a < first)
        assert abs(first / len(text) - depth) < 0.05


@pytest.mark.parametrize("family", sorted(SPREAD_FAMILIES))
def test_spread_values_differ_across_seeds(family):
    text = HAYSTACKS["short"]
    tasks = [SPREAD_FAMILIES[family](text, 0.5, random.Random(seed)) for seed in range(10)]
    assert len({task.answers for task in tasks}) == 10
    assert len({task.query for task in tasks}) >= 5


def _list_items(fragment):
    """The items of a ``list_fragments`` fragment, without markers and line ends."""
    _, *lines = fragment.split("\n")
    if lines:
        items = [re.sub(r"^(\d+\.|•|-) ", "", line) for line in lines]
    else:  # inline: "header: a; b; and c."
        items = re.split(r"; (?:and )?", fragment.split(": ", 1)[1])
    return [item.rstrip(";.") for item in items]


def _list_kind(query):
    """The `LIST_KINDS` entry and asked log that `query` was written from."""
    for kind in LIST_KINDS:
        for question in kind.questions:
            log = _fill(question, query, "log")
            if log is not None:
                return kind, log
    raise AssertionError(query)


def test_list_fragments_need_nearly_every_fragment_of_the_asked_log():
    forms, kinds = set(), set()
    for _, _, task in _benchmark_tasks("list_fragments"):
        kind, log = _list_kind(task.query)
        kinds.add(kind.log)
        needles = [task.context[a:b] for a, b in task.needle_spans]
        asked = [n for n in needles if log.lower() in n.lower()]
        others = [n for n in needles if log.lower() not in n.lower()]
        assert 4 <= len(asked) <= 8 and 1 <= len(others) <= 2
        assert needles[: len(asked)] == asked  # the asked log's fragments come first
        assert all(kind.log.split("{site}")[1] in n for n in others)  # the same kind of log
        counts = {c: sum(n.count(c) for n in asked) for c in kind.categories}
        top, runner_up, *rest = sorted(counts.values(), reverse=True)
        assert len(asked) - 1 <= top == runner_up + 1 and max(rest) < runner_up
        leaders = [c for c in kind.categories if counts[c] >= runner_up]
        items = [item for n in asked for item in _list_items(n)]
        assert sorted(task.answers) == sorted(i for i in items if any(c in i for c in leaders))
        assert len(task.answers) == top + runner_up
        holding = {i for i, n in enumerate(asked) for a in task.answers if a in n}
        assert len(holding) >= len(asked) - 1
        asked_words = content_words(task.query)
        assert not any(content_words(a) & asked_words for a in task.answers), task.query
        starts = sorted(a / len(task.context) for a, _ in task.needle_spans[: len(asked)])
        assert min(b - a for a, b in itertools.pairwise(starts)) > 0.01  # spread out
        first = asked[0].split("\n")
        forms.add("inline" if len(first) == 1 else first[1].split(" ")[0].lstrip("0123456789"))
        if first[1:] and first[1][0].isdigit():  # numbered on across fragments in text order
            in_order = sorted(zip(task.needle_spans, asked, strict=False))
            numbers = [int(n.split("\n")[1].split(".")[0]) for _, n in in_order]
            sizes = [len(_list_items(n)) for _, n in in_order]
            assert numbers == [1 + sum(sizes[:i]) for i in range(len(sizes))]
    assert forms == {"inline", ".", "•", "-"}
    assert len(kinds) == len(LIST_KINDS)


def test_list_questions_share_no_content_word_with_any_item():
    for kind in LIST_KINDS:
        items = content_words(" ".join([*kind.details, *kind.categories]))
        for question in kind.questions:
            for site in kind.sites:
                asked = content_words(question.format(log=kind.log.format(site=site)))
                assert not asked & items, (question, asked & items)
        assert len(kind.details) >= 40 and len(kind.categories) >= 6


def test_keyed_paragraphs_close_in_other_words_than_their_questions():
    stories = " ".join(s for bank in STORY_BANKS for s in bank)
    for form in KEYED_PARAGRAPHS:
        assert len(form.keys) >= 6 and len(form.values) >= 6
        for key, value in itertools.product(form.keys, form.values):
            asked = content_words(form.question.format(key=key))
            closing = content_words(form.closing.format(value=value))
            assert not asked & closing, (form.question, value, asked & closing)
            assert key in form.opening.format(key=key) and value not in stories
    assert all(len(bank) >= 14 for bank in STORY_BANKS)


def test_paragraph_key_value_sets_key_and_value_far_apart_among_look_alikes():
    from ilre_engine.budget import TokenCounter

    counter = TokenCounter("cl100k_base")
    forms = set()
    for _, _, task in _benchmark_tasks("paragraph_key_value"):
        value, key = task.answers
        paragraphs = [task.context[a:b] for a, b in task.needle_spans]
        assert 4 <= len(paragraphs) <= 6  # the asked one and 3 to 5 look-alikes
        (form,) = [f for f in KEYED_PARAGRAPHS if _fill(f.question, task.query, "key") == key]
        forms.add(form.opening)
        keys, values = set(), set()
        for paragraph in paragraphs:
            opening, _, rest = paragraph.partition(". ")
            story, _, closing = rest.rpartition(". ")
            keys.add(_fill(form.opening, opening + ".", "key"))
            values.add(_fill(form.closing, closing, "value"))
            assert 90 <= len(story.split()) <= 210
            assert 100 <= counter.count(story) <= 260  # tokens between key and value
        assert paragraphs[0].startswith(form.opening.format(key=key))
        assert paragraphs[0].endswith(form.closing.format(value=value))
        assert len(keys) == len(values) == len(paragraphs) and None not in keys | values
    assert len(forms) == len(KEYED_PARAGRAPHS)


def test_two_hop_moves_share_no_content_word_with_the_questions():
    for institution, roles in ROLE_BANKS:
        assert len(roles) >= 5
        for (move, *questions), role in itertools.product(MOVES, roles):
            asked = content_words(
                " ".join(q.format(role=f"{institution} {role}") for q in questions)
            )
            told = content_words(" ".join([move, *TOWNS, *FOUNDED]))
            assert not asked & told, (move, role, asked & told)


def test_two_hop_lookalike_links_a_role_to_a_far_sentence_by_surname():
    for _, _, task in _benchmark_tasks("two_hop_lookalike"):
        name, value = task.answers
        surname = name.split()[-1]
        needles = [task.context[a:b] for a, b in task.needle_spans]
        assert len(needles) == 10  # the asked pair and four look-alike pairs
        (first,) = [n for n in needles if name in n]
        (second,) = [n for n in needles if value in n]
        assert surname in second and name not in second
        assert content_words(first) & content_words(task.query)  # the role
        assert not content_words(second) & content_words(task.query)
        (a, _), (b, _) = (task.needle_spans[needles.index(n)] for n in (first, second))
        assert b - a >= 0.25 * len(task.context)  # B much later than A
        pairs = [needles[i : i + 2] for i in range(0, 10, 2)]
        pairs[0] = [first, second]
        spans = task.needle_spans
        assert all(spans[i][0] < spans[i + 1][0] for i in range(2, 10, 2))  # look-alikes: A, B
        for pool in (SURNAMES, TOWNS, FOUNDED):  # each pair its own person, town and thing
            used = [[v for v in pool if v in a + b] for a, b in pairs]
            assert all(len(u) == 1 for u in used) and len({u[0] for u in used}) == 5
        (roles,) = [r for i, r in ROLE_BANKS if i.split("'")[0] in first.lower()]
        assert len({r for a, _ in pairs for r in roles if r in a}) == 5
        assert sum(surname in n for n in needles) == 2
