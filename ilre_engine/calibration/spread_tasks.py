"""Retrieval task families whose answer is spread over the text.

ILRe ranks units (sentences, list lines) by their best token and keeps the best within a
budget; it has been seen to lose where the answer needs several units that the question
does not point at alike: most fragments of a list, both ends of a long paragraph, two
sentences linked only by a person's name. Each family draws its wording from several
templates and surface forms, so that no single template can be tuned to.

The generators follow the contract of `tasks` (``(haystack_text, depth, rng) ->
RetrievalTask``, the first needle at `depth`, exact `answer_spans` and `needle_spans`, every
answer occurring once in the context, inside its needle). Families (`SPREAD_FAMILIES`):

- ``list_fragments``: a log of items (``Grey Heron — winch failure``: a unique detail and a
  category) cut into 4 to 8 fragments spread through the text, each a numbered, bulleted or
  inline list under a header naming the log; one or two look-alike fragments of the same
  kind of log for another site. Asked which category occurs most often in the log; the
  answers are every item of the most frequent category and of the runner-up (one fewer),
  which between them sit in nearly every fragment: the evidence that decides the count. The
  question shares no content word with any item.
- ``paragraph_key_value``: a paragraph whose first sentence names a key and whose last holds
  the value, 90 to 180 words of unrelated story between, among 3 to 5 look-alike paragraphs
  for other keys (same opening, closing and story bank). The question names the key and
  shares no content word with the closing sentence or the value. Answers: the value and the
  key, so that a kept value can be told apart from the look-alikes' values.
- ``two_hop_lookalike``: sentence A names a person by role (``The harbour's chief surveyor
  was Ilse Marrow.``), sentence B, at least a fifth of the text away, tells by surname alone
  where they moved and what they founded; four look-alike pairs for other roles of the same
  institution. Asked by role what the person founded (or where they went); the question
  shares no content word with B. Answers: the full name (only in A) and the asked value
  (in B).

Mostly data: hand-written banks of wording beside three small generators.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .hard_tasks import _pick
from .tasks import RetrievalTask, _build

# -- helpers ---------------------------------------------------------------------------------


def _capitalized(text: str) -> str:
    """`text` with its first character upper-cased (a phrase put at a sentence's start)."""
    return text[:1].upper() + text[1:]


def _spread_depths(rng: random.Random, first: float, count: int) -> list[float]:
    """`first` and `count - 1` further depths, one drawn inside each of the other equal
    slices of [0.02, 0.98], so that the needles spread over the whole text instead of
    clustering where uniform draws would put several of them together."""
    low, width = 0.02, 0.96 / count
    own = min(count - 1, max(0, int((first - low) / width)))
    others = [low + width * (i + 0.1 + 0.8 * rng.random()) for i in range(count) if i != own]
    return [first, *others]


# -- a list cut into fragments ---------------------------------------------------------------


@dataclass(frozen=True)
class ListKind:
    """One kind of log for ``list_fragments``.

    Attributes:
        log: the log's name, with ``{site}``: ``the {site} harbour incident log``.
        questions: with ``{log}``; none shares a content word with a detail or a category.
        sites: whose logs these are (one asked, one for the look-alike fragments).
        details: the per-item part, unique within a task (a vessel, a ward, a train).
        categories: what the question counts (a fault, a candidate, a cause).
    """

    log: str
    questions: tuple[str, ...]
    sites: tuple[str, ...]
    details: tuple[str, ...]
    categories: tuple[str, ...]


def _pairs(firsts: Sequence[str], seconds: Sequence[str], joint: str = " ") -> tuple[str, ...]:
    """Every first part joined to every second part: a pool of distinct names."""
    return tuple(f"{a}{joint}{b}" for a in firsts for b in seconds)


LIST_KINDS: tuple[ListKind, ...] = (
    ListKind(
        log="the {site} harbour incident log",
        questions=(
            "Which problem did {log} record most often?",
            "What went wrong most often according to {log}?",
        ),
        sites=("Saltcote", "Dunmere", "Porthallow", "Wrexton", "Kelbrook"),
        details=_pairs(
            ["Grey", "Silver", "Northern", "Little", "Brave", "Quiet", "Scarlet", "Morning"],
            ["Heron", "Gannet", "Tern", "Lantern", "Puffin", "Kittiwake", "Skua", "Plover"],
        ),
        categories=(
            "winch failure",
            "fuel leak",
            "torn net",
            "cracked hull plate",
            "flooded bilge",
            "snapped mooring line",
        ),
    ),
    ListKind(
        log="the {site} county returns",
        questions=(
            "Which candidate carried the most wards in {log}?",
            "Who won the largest number of wards according to {log}?",
        ),
        sites=("Ashby Vale", "Carrowmore", "Tillingham", "Marsden", "Oakhurst"),
        details=_pairs(
            ["Mill", "Thorn", "Wick", "Hazel", "Elder", "Rook", "Fern", "Bram"],
            ["field", "gate", "stead", "combe", "marsh", "holt", "bury", "well"],
            "",
        ),
        categories=("Okafor", "Lindqvist", "Brandt", "Haddad", "Ferreira", "Novak"),
    ),
    ListKind(
        log="the {site} estuary survey",
        questions=(
            "Which bird was seen at the largest number of spots in {log}?",
            "What species turned up at more places than any other in {log}?",
        ),
        sites=("Fennick", "Holm Sands", "Callowby", "Brinsea", "Marlow Flats"),
        details=_pairs(
            ["North", "East", "Old", "Long", "High", "Low", "Salt", "Reed"],
            ["Spit", "Bank", "Creek", "Sluice", "Hide", "Dyke", "Pool", "Staithe"],
        ),
        categories=(
            "curlew",
            "redshank",
            "little egret",
            "oystercatcher",
            "grey plover",
            "shelduck",
        ),
    ),
    ListKind(
        log="the {site} line delay register",
        questions=(
            "What held up trains most often according to {log}?",
            "Which cause of lateness appears most often in {log}?",
        ),
        sites=("Wexley", "Cinderford", "Eastleigh Vale", "Morwen", "Hatherby"),
        details=_pairs(
            [
                "05:14",
                "06:02",
                "06:47",
                "07:12",
                "07:55",
                "08:31",
                "09:08",
                "10:26",
                "11:40",
                "13:15",
            ],
            ["Barnby", "Coldharbour", "Elmley", "Fosse", "Rudgwick"],
            " to ",
        ),
        categories=(
            "signal fault",
            "points failure",
            "crew shortage",
            "flooded cutting",
            "cattle on the track",
            "broken-down freight",
        ),
    ),
    ListKind(
        log="the {site} depot order book",
        questions=(
            "Which material was requested most often in {log}?",
            "What did customers ask for most often according to {log}?",
        ),
        sites=("Halsey", "Brockwell", "Penmarric", "Otterby", "Lindow"),
        details=_pairs(
            ["Hollis", "Garside", "Pruett", "Cavanagh", "Lomax", "Threlfall", "Ibbotson", "Quayle"],
            ("& Sons", "Brothers", "& Daughters", "and Partners", "Limited"),
        ),
        categories=(
            "copper wire",
            "roofing felt",
            "lamp oil",
            "fence posts",
            "sash cord",
            "galvanised nails",
        ),
    ),
)
"""The kinds of log of ``list_fragments``."""

LIST_HEADERS = (
    "{Log}, sheet {part}:",
    "{Log}, page {part}:",
    "From {log}, sheet {part}:",
    "Entries copied from {log} (page {part}):",
)
"""A fragment's lead-in, with ``{log}`` (``{Log}`` capitalized) and ``{part}``."""

LINE_ITEMS = ("{detail} — {category}", "{detail}: {category}", "{category} — {detail}")
"""An item of a numbered or bulleted list."""
INLINE_ITEMS = ("{detail} ({category})", "{detail}, {category}")
"""An item of an inline list, whose items are joined by semicolons."""


def _list_fragment(
    header: str, items: Sequence[str], form: str, first_number: int, line_end: str
) -> str:
    """One fragment: `header`, then `items` as numbered lines (from `first_number`),
    bulleted lines (`form` is the bullet) or, for ``inline``, one semicolon-joined
    sentence; lines end with `line_end`, the last with a full stop."""
    if form == "inline":
        return f"{header} {'; '.join(items[:-1])}; and {items[-1]}."
    marks = [f"{first_number + i}." for i in range(len(items))] if form == "numbered" else None
    lines = [f"{marks[i] if marks else form} {item}" for i, item in enumerate(items)]
    return "\n".join([header, *(line + line_end for line in lines[:-1]), lines[-1] + "."])


def _category_counts(rng: random.Random, fragments: int) -> list[int]:
    """How often each of five categories occurs: the most frequent in all fragments or all
    but one, the runner-up once fewer, and three more at most half as often as the runner-up
    (at least once each), raised while there are fewer items than two a fragment but never
    to the runner-up's count (three of them at one fewer always suffice)."""
    top = fragments - rng.randint(0, 1)
    runner_up = top - 1
    rest = [rng.randint(1, max(1, runner_up // 2)) for _ in range(3)]
    while top + runner_up + sum(rest) < 2 * fragments:
        rest[rest.index(min(rest))] += 1
    return [top, runner_up, *rest]


def _deal(rng: random.Random, counts: Sequence[int], fragments: int) -> list[list[int]]:
    """Category indices dealt into `fragments` fragments: each category's occurrences into
    distinct fragments (while it has no more occurrences than fragments), each next item
    to the fragments that hold fewest so far; shuffled within each fragment."""
    dealt: list[list[int]] = [[] for _ in range(fragments)]
    for category, count in enumerate(counts):
        for _ in range(count):
            free = [f for f in range(fragments) if category not in dealt[f]] or list(
                range(fragments)
            )
            fewest = min(len(dealt[f]) for f in free)
            dealt[rng.choice([f for f in free if len(dealt[f]) == fewest])].append(category)
    for fragment in dealt:
        rng.shuffle(fragment)
    return dealt


def list_fragments_task(text: str, depth: float, rng: random.Random) -> RetrievalTask:
    """A log of a kind from `LIST_KINDS` in 4 to 8 fragments (the first at `depth`, the
    rest one in each other slice of the text), numbered across fragments in text order,
    bulleted, or inline; one or two look-alike fragments of another site's log. Asked
    which category the log holds most often; answers: every item of the most frequent and
    of the runner-up category."""
    kind = rng.choice(LIST_KINDS)
    fragments = rng.randint(4, 8)
    counts = _category_counts(rng, fragments)
    categories = rng.sample(kind.categories, len(counts))
    dealt = _deal(rng, counts, fragments)
    look_alikes = [
        [rng.randrange(len(kind.categories)) for _ in range(rng.randint(2, 4))]
        for _ in range(rng.randint(1, 2))
    ]
    site, other_site = _pick(rng, kind.sites, text, set(), 2)
    taken: set[str] = set()
    details = _pick(rng, kind.details, text, taken, sum(map(len, [*dealt, *look_alikes])))
    form = rng.choice(("numbered", "•", "-", "inline"))
    item_form = rng.choice(INLINE_ITEMS if form == "inline" else LINE_ITEMS)
    header, line_end = rng.choice(LIST_HEADERS), rng.choice(("", ";", "."))

    depths = _spread_depths(rng, depth, fragments)
    depths += [0.02 + 0.96 * rng.random() for _ in look_alikes]
    # items: (fragment, category name, answer-worthy); parts and numbers follow text order
    logs = [site] * fragments + [other_site] * len(look_alikes)
    names = [[categories[c] for c in f] for f in dealt]
    names += [[kind.categories[c] for c in f] for f in look_alikes]
    needles: list[str] = [""] * len(logs)
    answers: list[tuple[str, int]] = []
    next_detail = iter(details)
    for log_site in (site, other_site):
        own = sorted((d, i) for i, d in enumerate(depths) if logs[i] == log_site)
        number = 1
        for part, (_, i) in enumerate(own, start=1):
            log = kind.log.format(site=log_site)
            lead = header.format(log=log, Log=_capitalized(log), part=part)
            items = [item_form.format(detail=next(next_detail), category=name) for name in names[i]]
            needles[i] = _list_fragment(lead, items, form, number, line_end)
            number += len(items)
            if log_site == site:
                answers += [
                    (item, i)
                    for item, c in zip(items, dealt[i], strict=True)
                    if c < 2  # the most frequent category and the runner-up
                ]
    question = rng.choice(kind.questions).format(log=kind.log.format(site=site))
    return _build("list_fragments", text, depth, needles, depths, question, answers)


# -- a key and its value at the two ends of a paragraph --------------------------------------


@dataclass(frozen=True)
class KeyedParagraph:
    """One paragraph form of ``paragraph_key_value``.

    Attributes:
        opening: the first sentence, naming ``{key}``.
        closing: the last sentence, holding ``{value}``; shares no content word with the
            question.
        question: names ``{key}``; shares no content word with the closing or a value.
        keys: distinct keys (one asked, the others for look-alike paragraphs).
        values: distinct values.
    """

    opening: str
    closing: str
    question: str
    keys: tuple[str, ...]
    values: tuple[str, ...]


KEYED_PARAGRAPHS: tuple[KeyedParagraph, ...] = (
    KeyedParagraph(
        opening="The shipment for {key} was logged by the harbour office on a wet Monday.",
        closing="When the lid was finally prised off, inside lay {value}.",
        question="What did the cargo addressed to {key} contain?",
        keys=(
            "Rellington Quay",
            "Marrow Wharf",
            "Tollesby Pier",
            "Cranhope Dock",
            "Fenwick Basin",
            "Ashcombe Jetty",
            "Saltram Landing",
        ),
        values=(
            "forty brass lanterns",
            "a dismantled church organ",
            "six barrels of Seville oranges",
            "a stuffed polar bear",
            "two hundred slate roof tiles",
            "a crate of Dutch tulip bulbs",
            "a marble bust of Garibaldi",
        ),
    ),
    KeyedParagraph(
        opening="{key} took over the lease of the corner workshop in the spring.",
        closing="Years later the neighbours still said the place had always smelled of {value}.",
        question="What scent filled the premises rented by {key}?",
        keys=(
            "Agatha Brennock",
            "Tobias Wrenfield",
            "Mirela Castellane",
            "Jonas Hartigan",
            "Ottilie Farrow",
            "Casimir Dunlevy",
            "Beatrix Holloway",
        ),
        values=(
            "burnt caramel",
            "linseed oil",
            "wet wool",
            "pine resin",
            "cloves and bitter orange",
            "hot solder",
            "fresh sawdust",
        ),
    ),
    KeyedParagraph(
        opening="The expedition led by {key} set out from the coast in early March.",
        closing="Of everything they carried, only {value} came home in one piece.",
        question="Which item survived the journey of the party under {key}?",
        keys=(
            "Commander Ruth Escott",
            "Captain Elias Marchbank",
            "Professor Sunniva Holt",
            "Major Anselm Crewe",
            "Professor Ilka Varga",
            "Captain Hugo Lisle",
        ),
        values=(
            "a cracked pocket compass",
            "the cook's copper kettle",
            "a tin of lemon drops",
            "a single snowshoe",
            "a banjo with two strings",
            "a sealskin map case",
        ),
    ),
    KeyedParagraph(
        opening="The wedding of {key} was held in the old mill by the river.",
        closing="Guests danced until dawn to a band that knew nothing but {value}.",
        question="What kind of music was performed at the marriage celebration of {key}?",
        keys=(
            "Clemency Rook",
            "Ivo Brathwaite",
            "Perpetua Lang",
            "Anselm Torrey",
            "Rosamund Quill",
            "Teodor Maslin",
        ),
        values=(
            "Galician bagpipe tunes",
            "Cape Verdean mornas",
            "Hungarian czardas",
            "Bavarian brass marches",
            "Cajun waltzes",
            "Sicilian tarantellas",
        ),
    ),
    KeyedParagraph(
        opening="{key} at the Hotel Bellavista was booked under a false name for all of August.",
        closing="The maid who cleaned it afterwards found {value} behind the wardrobe.",
        question="What was discovered hidden in {key} once the guest checked out?",
        keys=(
            "Room Twelve",
            "Room Thirty",
            "Room Nineteen",
            "Room Forty",
            "Room Sixteen",
            "Room Eighty",
        ),
        values=(
            "a forged passport",
            "a jar of glass eyes",
            "three unopened love letters",
            "a loaded starting pistol",
            "a ring in a sardine tin",
            "a map of the Dolomites",
        ),
    ),
    KeyedParagraph(
        opening="The observatory on {key} ordered a new telescope mirror last winter.",
        closing="In the end it was ground and polished by {value}.",
        question="Who shaped the lens glass for the stargazing station on {key}?",
        keys=(
            "Hallin Ridge",
            "Carrick Fell",
            "Mount Orrin",
            "Skelder Moor",
            "Whinlatter Edge",
            "Dunhallow Hill",
        ),
        values=(
            "a retired watchmaker from Jena",
            "two nuns in Cracow",
            "a blind optician in Delft",
            "the village blacksmith's daughter",
            "a Welsh lighthouse keeper",
            "an apprentice spectacle grinder",
        ),
    ),
)
"""The paragraph forms of ``paragraph_key_value``."""

STORY_BANKS: tuple[tuple[str, ...], ...] = (
    (  # a small town through a wet winter
        "That week the rain came in sideways off the moor and nobody left without a scarf.",
        "The baker on the corner had started selling a rye loaf that older people distrusted.",
        "Down by the square, two brothers were arguing again about who owned a broken handcart.",
        "A travelling dentist set up a chair in the churchyard and pulled teeth for a shilling.",
        "The schoolmistress had the children copy psalms until their fingers were black with ink.",
        "Someone's goat escaped and ate half the vicar's runner beans before anyone caught it.",
        "Prices at the market had crept up since the bridge upstream washed away in January.",
        "In the evenings the men played dominoes at the inn and complained about the new tax.",
        "The postman, who was nearly deaf, delivered every letter twice to be on the safe side.",
        "A fog lay over the river for most of a fortnight, and the ferry ran only at noon.",
        "Old Mrs Penrose swore she had seen a fox wearing a collar near the chapel wall.",
        "The council argued for three meetings about whether to paint the pump green or blue.",
        "Children skated on the mill pond until the ice cracked and the miller chased them off.",
        "A circus passed through in February, though only the elephant seemed to enjoy the cold.",
        "The doctor's new motor car frightened every horse between the station and the common.",
        "By the end of the month the lanes were so deep in mud that carts sank to the axles.",
    ),
    (  # a city's news and gossip
        "The trams were late all that winter because the overhead wires kept icing up at night.",
        "A clerk in the counting house was caught writing poetry in the margins of the ledger.",
        "The newspapers were full of a quarrel between two professors about the age of a fossil.",
        "Every lunchtime the street sellers shouted over one another about hot chestnuts and eels.",
        "The river stank so badly in the heat that the courts sat with their windows shut.",
        "A new department store opened with a lift that people queued an hour to ride.",
        "Gas lamps were going in along the avenue, and the lamplighters feared for their jobs.",
        "The cathedral's choristers refused to sing over the price of their Sunday dinners.",
        "A pickpocket was arrested in the park with eleven watches sewn inside his coat.",
        "Builders knocked down a row of cottages to widen the road, and found a Roman coin.",
        "The telephone exchange hired forty young women, and the telegraph boys sulked.",
        "A famous tenor caught a cold, and the opera house refunded half its tickets.",
        "Coal smoke hung so thick over the east end that the church clock could not be read.",
        "The museum put a whale skeleton in its front hall, and schoolboys climbed its ribs.",
        "Cab drivers argued with the police for weeks about where they were allowed to wait.",
        "A balloonist promised to cross the city from the gasworks but landed on a brewery.",
    ),
    (  # a mountain valley's seasons
        "The snow came early that year, and the sheep had to be brought down in October.",
        "Up at the high farm the well froze solid, so they melted ice in a copper every morning.",
        "The schoolhouse roof leaked over the third row of desks, which nobody wanted to sit in.",
        "A peddler came up the valley selling ribbons, needles and almanacs a year out of date.",
        "Two of the cows went lame on the stony track, and the farrier had to be fetched.",
        "The priest walked six miles to the upper hamlet each Sunday, whatever the weather.",
        "Hay ran short by February and the goats were fed on dried birch leaves.",
        "A rockfall closed the pass for nine days, and the mail piled up at the inn below.",
        "The young men spent long evenings carving spoons and quarrelling about the harvest.",
        "An avalanche took out the old sawmill, though its blade was found again in spring.",
        "The women dyed wool with lichen scraped from the boulders above the tree line.",
        "A fever went round the children, and the midwife sat up with each of them in turn.",
        "The river was too high to ford until May, so the bridge was the talk of every meal.",
        "Someone's dog chased a chamois halfway up the cliff and had to be roped down.",
        "Butter was packed in barrels and sent down to the valley on the backs of mules.",
        "By Easter the track was mud to the knees, and the cart wheels had to be dug out twice.",
    ),
)
"""Story sentences for the middle of ``paragraph_key_value``'s paragraphs, one bank per task
(look-alike paragraphs share it): about nothing the question asks."""

STORY_WORDS = (90, 180)
"""Words of story between a paragraph's key and its value, drawn per paragraph: with cl100k
about 100 to 250 tokens."""


def _story(rng: random.Random, bank: Sequence[str]) -> str:
    """Sentences of `bank` in an order drawn from `rng`, until at least a number of words
    drawn from `STORY_WORDS`."""
    target = rng.randint(*STORY_WORDS)
    chosen: list[str] = []
    for sentence in rng.sample(list(bank), len(bank)):
        if sum(len(s.split()) for s in chosen) >= target:
            break
        chosen.append(sentence)
    return " ".join(chosen)


def paragraph_key_value_task(text: str, depth: float, rng: random.Random) -> RetrievalTask:
    """A paragraph of a form from `KEYED_PARAGRAPHS` at `depth` (its key in the first
    sentence, its value in the last, a story of `STORY_WORDS` words between) and 3 to 5
    look-alike paragraphs of the same form and story bank for other keys, at random depths.
    Asked for the value by the key; answers: the value and the key."""
    form = rng.choice(KEYED_PARAGRAPHS)
    bank = rng.choice(STORY_BANKS)
    count = 1 + rng.randint(3, 5)
    keys = _pick(rng, form.keys, text, set(), count)
    values = _pick(rng, form.values, text, set(), count)
    needles = [
        " ".join(
            [form.opening.format(key=key), _story(rng, bank), form.closing.format(value=value)]
        )
        for key, value in zip(keys, values, strict=True)
    ]
    return _build(
        "paragraph_key_value",
        text,
        depth,
        needles,
        [depth, *(0.02 + 0.96 * rng.random() for _ in range(count - 1))],
        form.question.format(key=keys[0]),
        [(values[0], 0), (keys[0], 0)],
    )


# -- a two-hop link among look-alike pairs ---------------------------------------------------

ROLE_BANKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "the harbour's",
        ("chief surveyor", "chief pilot", "chief engineer", "chief clerk", "chief diver"),
    ),
    (
        "the observatory's",
        ("night assistant", "instrument maker", "librarian", "photographer", "night watchman"),
    ),
    ("the college's", ("bursar", "organist", "porter", "chaplain", "groundsman", "senior cook")),
    (
        "the mining company's",
        ("paymaster", "blasting foreman", "surveyor", "physician", "stable master", "assayer"),
    ),
    (
        "the railway's",
        ("stationmaster", "signal inspector", "ticket clerk", "track foreman", "telegraphist"),
    ),
)
"""``(institution, roles)``: a task's five roles come from one institution, so that the
look-alike pairs differ from the asked one in a word or two of the role."""

ROLE_SENTENCES = (
    "{Role} at that time was {name}.",
    "In those years {role} was {name}.",
    "{name} served as {role}.",
    "The post of {role_noun} at {place_of_work} was held by {name}.",
)
"""Sentence A: names a person by role (``{role}``: institution and role, ``{Role}``
capitalized; ``{role_noun}`` and ``{place_of_work}``: the two apart)."""

PLACE_OF_WORK = {
    "the harbour's": "the harbour",
    "the observatory's": "the observatory",
    "the college's": "the college",
    "the mining company's": "the mining company",
    "the railway's": "the railway",
}
"""The institution as a place, for the ``post of`` sentence."""

MOVES: tuple[tuple[str, str, str], ...] = (
    (
        "{surname} later moved to {place} and founded {thing}.",
        "What did {role} go on to establish?",
        "Where did {role} eventually settle?",
    ),
    (
        "Years afterwards {surname} settled in {place} and opened {thing} there.",
        "What business was begun by {role}?",
        "In which town did {role} end up living?",
    ),
    (
        "After leaving, {surname} made a new home in {place} and set up {thing}.",
        "Which enterprise did {role} launch?",
        "Where did {role} finally reside?",
    ),
    (
        "It was in {place} that {surname} later created {thing}.",
        "What was founded by {role}?",
        "Where did {role} move afterwards?",
    ),
)
"""``(sentence B, question for the thing, question for the place)``: B names the person by
surname alone and shares no content word with either question."""

FIRST_NAMES = ("Ilse", "Tarik", "Brenna", "Oskar", "Mirela", "Jonas", "Sunniva", "Dario", "Agnes")
SURNAMES = (
    "Marrow",
    "Quilliam",
    "Ostrander",
    "Bellweather",
    "Darnley",
    "Halloran",
    "Kestle",
    "Morcant",
    "Pennick",
    "Treloar",
)
TOWNS = (
    "Cardow",
    "Brennick",
    "Hollin Bay",
    "Tarrow",
    "Essingham",
    "Caldmere",
    "Pellwick",
    "Ormsby Cross",
    "Kilvane",
    "Dunstow",
)
FOUNDED = (
    "a rope works",
    "a school for deaf children",
    "a cider press",
    "a small shipping line",
    "a botanical garden",
    "a printing shop",
    "a choir for fishermen's wives",
    "a lending library",
    "a brickworks",
    "a fencing club",
    "a glassblowing studio",
    "a bee farm",
)
"""Names, towns and founded things of ``two_hop_lookalike``."""

PAIRS = 5
"""The asked pair and four look-alikes."""


def two_hop_lookalike_task(text: str, depth: float, rng: random.Random) -> RetrievalTask:
    """Five pairs of sentences, each A (a role and a full name) before B (the surname, a
    town, a founded thing) at least a fifth of the text later; the asked pair's A or B at
    `depth` (A when `depth` <= 0.5), its other sentence 0.3 to 0.45 of the text away.
    Asked by role for the founded thing or the town; answers: the full name and that
    value."""
    institution, roles = rng.choice(ROLE_BANKS)
    chosen_roles = rng.sample(roles, PAIRS)
    surnames = _pick(rng, SURNAMES, text, set(), PAIRS)
    names = [f"{rng.choice(FIRST_NAMES)} {surname}" for surname in surnames]
    towns = _pick(rng, TOWNS, text, set(), PAIRS)
    things = _pick(rng, FOUNDED, text, set(), PAIRS)
    move, thing_question, town_question = rng.choice(MOVES)
    ask_thing = rng.random() < 0.5

    needles: list[str] = []
    depths: list[float] = []
    for i, role_noun in enumerate(chosen_roles):
        role = f"{institution} {role_noun}"
        first = rng.choice(ROLE_SENTENCES).format(
            Role=_capitalized(role),
            role=role,
            role_noun=role_noun,
            place_of_work=PLACE_OF_WORK[institution],
            name=names[i],
        )
        second = move.format(surname=surnames[i], place=towns[i], thing=things[i])
        if i > 0:
            a = 0.02 + 0.58 * rng.random()
            needles += [first, second]
            depths += [a, a + 0.2 + (0.78 - a) * rng.random()]
            continue
        gap = 0.3 + 0.15 * rng.random()
        if depth <= 0.5:
            needles += [first, second]
            depths += [depth, min(0.98, depth + gap)]
        else:
            needles += [second, first]
            depths += [depth, max(0.02, depth - gap)]
    first_index, second_index = (0, 1) if depth <= 0.5 else (1, 0)
    asked = things[0] if ask_thing else towns[0]
    question = (thing_question if ask_thing else town_question).format(
        role=f"{institution} {chosen_roles[0]}"
    )
    return _build(
        "two_hop_lookalike",
        text,
        depth,
        needles,
        depths,
        question,
        [(names[0], first_index), (asked, second_index)],
    )


SPREAD_FAMILIES: dict[str, Callable[[str, float, random.Random], RetrievalTask]] = {
    "list_fragments": list_fragments_task,
    "paragraph_key_value": paragraph_key_value_task,
    "two_hop_lookalike": two_hop_lookalike_task,
}
"""The families of this module by name, each called as ``(haystack_text, depth, rng)``."""
