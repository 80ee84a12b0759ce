"""Retrieval task families aimed at the kinds of question ILRe has been seen to lose on.

The generators follow the contract of `tasks` (``(haystack_text, depth, rng) ->
RetrievalTask``, the first needle at `depth`, further needles at depths drawn from `rng`,
exact `answer_spans` and `needle_spans`) and reuse its helpers; `tasks` never imports this
module, and `families.ALL_FAMILIES` merges both registries. Families (`HARD_FAMILIES`):

- ``long_value``: the answer is one long unbroken string (a UUID, a 40-digit hex hash, a URL
  with path and query, a dotted and hyphenated build tag, an API key or a dotted call), so
  keeping its first piece is not enough. One distractor of the same kind.
- ``number_words``: numbers written as words, in the answer (a combination, a count, a
  price) and, for lockers, flights and rooms, in the question's key; two distractors that
  differ only in the key.
- ``paraphrase_fact``: a fact and a question that share no content word (see
  `content_words`), from `PARAPHRASED_FACTS`; the slot value is drawn per sample.
- ``split_fact``: a fact over two adjacent sentences: the first names a person, the second
  (about them only through a pronoun) holds the answer. A distractor pair of the same form
  about someone else sits elsewhere.
- ``aggregate_count``: "how many" over 3 to 6 mentions of one kind of event among 2 to 4
  mentions of the same event somewhere else; every mention's name is an answer.
- ``long_chain``: a variable chain of 4 to 6 links among two distractor chains of the same
  form, asked by its last variable; the value and every name of the chain are answers.
- ``prose_qa``: hand-written questions over the essays (`PROSE_QUESTIONS`), answered by short
  spans of them, as ``essay_qa`` but a new bank spread so that every prefix of 4k to 32k
  tokens holds several answers.

Longer than the other modules because of data: most of it is hand-written banks of facts,
paraphrased questions and prose questions beside small generators.
"""

from __future__ import annotations

import itertools
import random
import re
import string
import uuid
from collections.abc import Callable, Iterable, Sequence

from ..errors import ILReError
from .tasks import RetrievalTask, _build, _number, _other_depths, _variable

# -- helpers ---------------------------------------------------------------------------------


def _pick(
    rng: random.Random, pool: Sequence[str], text: str, taken: set[str], count: int = 1
) -> list[str]:
    """`count` values of `pool` in an order drawn from `rng`, skipping those that occur in
    `text` and those that contain or are contained in a value of `taken` (the chosen ones
    are added to `taken`, so no answer is a substring of another)."""
    chosen: list[str] = []
    for value in rng.sample(list(pool), len(pool)):
        if value in text or any(value in t or t in value for t in taken):
            continue
        chosen.append(value)
        taken.add(value)
        if len(chosen) == count:
            return chosen
    raise ILReError(f"fewer than {count} usable values in {list(pool)[:3]}...")


def _alnum(rng: random.Random, length: int, alphabet: str = "") -> str:
    alphabet = alphabet or string.ascii_letters + string.digits
    return "".join(rng.choice(alphabet) for _ in range(length))


Maker = Callable[[random.Random], str]
"""Draws a value from an RNG."""


def _draw(rng: random.Random, make: Maker, text: str, taken: set[str]) -> str:
    """A value of `make` that is not in `text` and not a substring of (or containing) any
    value in `taken`; added to `taken`."""
    for _ in range(1000):
        try:
            return _pick(rng, [make(rng)], text, taken)[0]
        except ILReError:
            continue
    raise ILReError("no fresh value")


_NUMBERS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
)
_DECADES = "_ _ twenty thirty forty fifty sixty seventy eighty ninety"
_ONES, _TENS = _NUMBERS.split(), _DECADES.split()


def spell_number(n: int) -> str:
    """`n` (0..999) in English words: ``41`` -> ``forty-one``, ``237`` -> ``two hundred and
    thirty-seven``."""
    if not 0 <= n < 1000:
        raise ValueError(n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    rest = n % 100
    return f"{_ONES[n // 100]} hundred" + ("" if rest == 0 else f" and {spell_number(rest)}")


_FUNCTION_WORDS = """
    a an the and or but if of in on at to for from by with without into onto about as than then
    so not no is are was were be been being am do does did has have had having will would can
    could shall should may might must what which who whom whose where when why how that this
    these those it its he him his she her hers they them their we our us you your i me my one
    some any each every all there here up out over s t
"""
STOPWORDS = frozenset(_FUNCTION_WORDS.split())
"""Function words that `content_words` ignores."""


def _stem(word: str) -> str:
    for suffix in ("ers", "ing", "ed", "es", "er", "ly", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> set[str]:
    """The content words of `text`: lower-cased runs of letters, `STOPWORDS` removed, one
    common suffix (-ers, -ing, -ed, -es, -er, -ly, -s) stripped."""
    words = re.findall(r"[^\W\d_]+", text.lower())
    return {_stem(w) for w in words if w not in STOPWORDS}


# -- long unbroken answers -------------------------------------------------------------------


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _sha1(rng: random.Random) -> str:
    return f"{rng.getrandbits(160):040x}"


def _url(rng: random.Random) -> str:
    host = rng.choice(("downloads.corvid-labs.io", "cdn.tessellate.net", "files.brandt-av.de"))
    path = "/".join(rng.sample(("releases", "stable", "amd64", "pkg", "v2", "mirror"), 2))
    query = f"token={_alnum(rng, 10)}&rev={rng.randrange(1000, 10000)}"
    return f"https://{host}/{path}/{_alnum(rng, 8, string.ascii_lowercase)}.tar.gz?{query}"


def _build_tag(rng: random.Random) -> str:
    name = rng.choice(("orion", "vega", "talon", "mistral", "cobalt", "quasar"))
    major, build = rng.randrange(2, 20), rng.randrange(1000, 10000)
    if rng.random() < 0.5:
        return f"{name}-{major}.build.{build}-rc{rng.randrange(1, 10)}"
    return f"{name}.core-{major}.{rng.randrange(10)}.{build}+g{_alnum(rng, 7, '0123456789abcdef')}"


def _api_key(rng: random.Random) -> str:
    return f"sk_{rng.choice(('live', 'test'))}_{_alnum(rng, 24)}"


def _call(rng: random.Random) -> str:
    module = rng.choice(("ledger.sync", "auth.tokens", "geo.tiles"))
    return f"{module}.rebuild_{_alnum(rng, 4, string.ascii_lowercase)}(0x{rng.getrandbits(32):08x})"


LONG_VALUES: dict[str, tuple[str, str, Callable[[random.Random], str]]] = {
    "uuid": (
        "The account UUID assigned to {key} is {value}.",
        "What is the account UUID assigned to {key}?",
        _uuid,
    ),
    "hash": (
        "The commit hash of the {key} release is {value}.",
        "What is the commit hash of the {key} release?",
        _sha1,
    ),
    "url": (
        "The download link for the {key} installer is {value}.",
        "What is the download link for the {key} installer?",
        _url,
    ),
    "build_tag": (
        "The build tag of the {key} firmware is {value}.",
        "What is the build tag of the {key} firmware?",
        _build_tag,
    ),
    "api_key": (
        "The API key of the {key} billing service is {value}.",
        "What is the API key of the {key} billing service?",
        _api_key,
    ),
    "call": (
        "The repair call for the {key} ledger is {value}.",
        "What is the repair call for the {key} ledger?",
        _call,
    ),
}
"""Kind -> (needle, question, value maker) of ``long_value``; `{key}` is a project name."""

_PROJECTS = (
    "Kestrel",
    "Juniper",
    "Halcyon",
    "Marigold",
    "Tamarack",
    "Osprey",
    "Larkspur",
    "Brackwater",
    "Sorrel",
    "Wintergreen",
)


def long_value_task(text: str, depth: float, rng: random.Random) -> RetrievalTask:
    """A needle whose answer is a long unbroken string of a kind drawn from `LONG_VALUES`,
    asked for by its key's words; a distractor of the same kind for another project."""
    needle, question, make = LONG_VALUES[rng.choice(sorted(LONG_VALUES))]
    keys = rng.sample(_PROJECTS, 2)
    taken: set[str] = set()
    values = [_draw(rng, make, text, taken) for _ in keys]
    return _build(
        "long_value",
        text,
        depth,
        [needle.format(key=k, value=v) for k, v in zip(keys, values, strict=True)],
        [depth, *_other_depths(rng, 1)],
        question.format(key=keys[0]),
        [(values[0], 0)],
    )


# -- numbers written as words ----------------------------------------------------------------


def _combination(rng: random.Random) -> str:
    return ", ".join(spell_number(rng.randrange(1, 100)) for _ in range(3))


_TOWNS = ("Alder Creek", "Harbourview", "Elmstead", "Larkin Street", "Saltcote", "Hollowell")

NUMBER_FACTS: tuple[tuple[str, str, tuple[str, ...], Maker | None, Maker], ...] = (
    (
        "Locker {key} at the {place} gym opens with the code {value}.",
        "What code opens locker {key} at the {place} gym?",
        _TOWNS,
        lambda rng: spell_number(rng.randrange(10, 100)),
        _combination,
    ),
    (
        "The combination set on the safe in the {place} office is {value}.",
        "What combination was set on the safe in the {place} office?",
        _TOWNS,
        None,
        _combination,
    ),
    (
        "Flight {key} to {place} carried {value} passengers.",
        "How many passengers were on flight {key} to {place}?",
        ("Lisbon", "Nairobi", "Osaka", "Quito", "Tbilisi", "Windhoek"),
        lambda rng: spell_number(rng.randrange(100, 1000)),
        lambda rng: spell_number(rng.randrange(101, 400)),
    ),
    (
        "A night in room {key} of the {place} hotel costs {value} dollars.",
        "How many dollars does a night in room {key} of the {place} hotel cost?",
        _TOWNS,
        lambda rng: spell_number(rng.randrange(100, 500)),
        lambda rng: spell_number(rng.randrange(120, 500)),
    ),
)
"""(needle, question, places, key maker or None, answer maker) of ``number_words``: with a
key maker the needles differ by a key written in words at one place; without one, by place."""


def number_words_task(text: str, depth: float, rng: random.Random) -> RetrievalTask:
    """A fact whose answer is a number (or three) written as words, and two distractors of
    the same form told apart by a key written in words (or by the place)."""
    needle, question, towns, make_key, make_value = rng.choice(NUMBER_FACTS)
    places = rng.sample(towns, 3)
    taken: set[str] = set()
    if make_key is None:
        keys = [""] * 3
    else:
        places = [places[0]] * 3
        keys = [_draw(rng, make_key, text, taken) for _ in range(3)]
    values = [_draw(rng, make_value, text, taken) for _ in range(3)]
    needles = [
        needle.format(key=k, place=p, value=v) for k, p, v in zip(keys, places, values, strict=True)
    ]
    return _build(
        "number_words",
        text,
        depth,
        needles,
        [depth, *_other_depths(rng, 2)],
        question.format(key=keys[0], place=places[0]),
        [(values[0], 0)],
    )


# -- a fact and a question in other words ----------------------------------------------------

PARAPHRASED_FACTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "The lighthouse keeper's daughter was born in {value} in the winter of 1911.",
        "In which town did the child of the person tending the coastal beacon come into the world?",
        ("Tromsø", "Hammerfest", "Vardø", "Narvik", "Bodø", "Kirkenes"),
    ),
    (
        "The retired surgeon spends every August fishing for trout at {value}.",
        "Where does the former doctor who used to operate on patients go angling each "
        "late-summer month?",
        ("Lake Inari", "Loch Arkaig", "Lough Corrib", "Lake Bohinj", "Lake Ohrid"),
    ),
    (
        "Our chess club's founder learned the game from {value} during a long hospital stay.",
        "Who taught the person who started our board-strategy society how to play?",
        ("a Latvian night nurse", "an Armenian watchmaker", "a Bolivian glider pilot"),
    ),
    (
        "The village bakery buys all its flour from a mill in {value}.",
        "Which place supplies the ground grain used by the small town's bread shop?",
        ("Sundsvall", "Lleida", "Ostrava", "Tartu", "Trondheim"),
    ),
    (
        "The museum's oldest violin was crafted by {value} around 1690.",
        "Who made the most ancient fiddle held in the gallery's collection?",
        ("Jacob Stainer", "Matteo Goffriller", "Nicola Amati", "Giovanni Grancino"),
    ),
    (
        "The ferry captain's parrot only speaks {value}.",
        "In what tongue does the boat skipper's pet bird talk?",
        ("Faroese", "Basque", "Maltese", "Icelandic", "Breton", "Frisian"),
    ),
    (
        "The mayor's twin brother drives a {value} to work every morning.",
        "What vehicle does the sibling of the town leader take to the office each day?",
        ("mint-green Trabant", "rusty Lada Niva", "red Citroën 2CV", "yellow Saab 96"),
    ),
    (
        "The astronomer named the comet she discovered after her grandmother, {value}.",
        "Which elder relative was honored when the stargazer labeled the icy visitor she spotted?",
        ("Ingrid Solberg", "Halina Wróbel", "Oona Keskinen", "Rosalind Achterberg"),
    ),
    (
        "Professor Ando's lost manuscript turned up inside {value}.",
        "Where was the vanished draft of the academic's book eventually discovered?",
        ("a bread bin in Lyon", "a church organ in Graz", "a piano bench in Porto"),
    ),
    (
        "The orchestra's conductor refuses to perform without his lucky {value}.",
        "What charm must the leader of the symphony have before going on stage?",
        ("silver thimble", "brass compass", "wooden spoon", "tortoiseshell comb"),
    ),
    (
        "The novelist wrote her final book in a rented cabin near {value}.",
        "Close to which place did the fiction author compose her last work, in a leased hut?",
        ("Kilkenny", "Akureyri", "Rovaniemi", "Tórshavn"),
    ),
    (
        "The zoo's oldest tortoise was brought over from {value} on a cargo steamer.",
        "Where did the animal park's most aged reptile originally come from?",
        ("Aldabra", "the Seychelles", "Mauritius", "the Galápagos"),
    ),
    (
        "The hotel's night porter once climbed {value} without oxygen.",
        "Which peak did the overnight doorman of the inn scale with no bottled air?",
        ("Annapurna", "Makalu", "Lhotse", "Dhaulagiri"),
    ),
    (
        "The thief who robbed the jeweler's shop stashed the diamonds in {value}.",
        "Where did the burglar conceal the gems he took from the store?",
        ("a hollow bedpost", "a flour sack", "a dog kennel", "a piano lid"),
    ),
    (
        "The senator's speechwriter grew up on a sheep farm outside {value}.",
        "Near which place was the politician's ghost author raised among livestock?",
        ("Dunedin", "Invercargill", "Timaru", "Oamaru"),
    ),
    (
        "Our neighbour's greyhound won a silver medal at the races in {value}.",
        "In which city did the next-door family's swift hound take second prize?",
        ("Clonmel", "Youghal", "Dungarvan", "Limerick"),
    ),
    (
        "The composer wrote his only opera while recovering from {value}.",
        "During which illness did the music maker finish his single stage drama?",
        ("a broken hip", "scarlet fever", "typhoid", "pneumonia"),
    ),
    (
        "The pilot's first solo flight ended in a field of {value}.",
        "Where did the aviator's initial unaccompanied trip through the sky come to a stop?",
        ("sunflowers", "barley", "rapeseed", "lavender"),
    ),
    (
        "The king's favourite cook came from {value}.",
        "What was the homeland of the monarch's preferred chef?",
        ("Sardinia", "Crete", "Corsica", "Madeira"),
    ),
    (
        "The marathon runner trains by sprinting up the hill behind {value}.",
        "Where does the long-distance athlete practise dashing up a slope?",
        ("Bergen cathedral", "Uppsala castle", "the Ghent belfry", "Toledo's old mint"),
    ),
    (
        "The professor keeps his rare coin collection in {value}.",
        "Where does the lecturer store his uncommon money hoard?",
        ("a biscuit tin", "a locked cello case", "a shoebox under the stairs"),
    ),
    (
        "The ship's carpenter carved a figurehead shaped like {value}.",
        "What form did the vessel's woodworker give to the bow ornament he whittled?",
        ("a sea serpent", "a snow owl", "a crowned lion", "a mermaid"),
    ),
    (
        "The detective solved the case by noticing {value} on the victim's coat.",
        "What clue on the dead man's jacket led the investigator to the answer?",
        ("a smear of beeswax", "a single cat hair", "a grain of saffron", "a drop of tar"),
    ),
)
"""``(fact with {value}, question, values)`` of ``paraphrase_fact``: the question shares no
`content_words` with the fact, whichever value fills it."""


def paraphrase_fact_task(text: str, depth: float, rng: random.Random) -> RetrievalTask:
    """A fact from `PARAPHRASED_FACTS` with a value drawn from its slot's values, asked by a
    question in other words (no shared content word, checked)."""
    fact, question, values = rng.choice(PARAPHRASED_FACTS)
    value = _pick(rng, values, text, set())[0]
    needle = fact.format(value=value)
    if content_words(needle) & content_words(question):
        raise ILReError(f"paraphrase_fact: {question!r} shares words with {needle!r}")
    return _build("paraphrase_fact", text, depth, [needle], [depth], question, [(value, 0)])


# -- a fact over two sentences linked by a pronoun -------------------------------------------

SPLIT_FACTS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    (
        "{name} arrived with a sealed case.",
        "{pronoun} had hidden the key inside {value}.",
        "Where did {name} hide the key?",
        (
            "a hollow copy of Middlemarch",
            "a tin of Dutch cocoa",
            "the lining of a violin case",
            "a jar of pickled beets",
            "the heel of a riding boot",
        ),
    ),
    (
        "{name} left the harbour before dawn.",
        "{pronoun} was bound for {value} with a cargo of salt.",
        "Where was {name} bound when leaving the harbour?",
        ("the island of Gotland", "the port of Tórshavn", "the lagoon of Marano", "Ålesund"),
    ),
    (
        "{name} ran the small bakery on the square.",
        "{pronoun} had learned to bake from {value}.",
        "From whom did {name} learn to bake?",
        ("a retired ship's cook", "an aunt in Gdańsk", "a Benedictine monk", "a Lyon pâtissier"),
    ),
    (
        "{name} kept a diary throughout the war.",
        "{pronoun} buried it beneath {value}.",
        "Where did {name} bury the diary?",
        ("the third apple tree", "the chapel's stone step", "a broken millstone"),
    ),
    (
        "{name} won the regional chess final.",
        "{pronoun} celebrated by buying {value}.",
        "What did {name} buy to celebrate winning the chess final?",
        ("a second-hand accordion", "a brass telescope", "a tandem bicycle", "a gramophone"),
    ),
    (
        "{name} returned from the expedition with frostbite.",
        "{pronoun} had lost {value} on the glacier.",
        "What did {name} lose on the glacier?",
        ("a leather-bound logbook", "the only sextant", "two fingers and a compass"),
    ),
)
"""``(sentence naming {name}, sentence with {pronoun} and {value}, question, values)`` of
``split_fact``."""

_PEOPLE = (
    ("Dr. Imre Kovach", "He"),
    ("Nadia Orlova", "She"),
    ("Tomasz Wierzba", "He"),
    ("Ines Albuquerque", "She"),
    ("Captain Rolf Hedberg", "He"),
    ("Marguerite Vasseur", "She"),
    ("Kwame Asante-Boateng", "He"),
    ("Sister Agnieszka Dudek", "She"),
)


def split_fact_task(text: str, depth: float, rng: random.Random) -> RetrievalTask:
    """A fact over two adjacent needles at `depth`: a sentence naming a person and one that
    refers to them by pronoun and holds the answer; asked by the name. The same two sentences
    about another person (another value) sit at a random depth."""
    first, second, question, values = rng.choice(SPLIT_FACTS)
    people = rng.sample(_PEOPLE, 2)
    chosen = _pick(rng, values, text, set(), 2)
    needles: list[str] = []
    for (name, pronoun), value in zip(people, chosen, strict=True):
        needles += [first.format(name=name), second.format(pronoun=pronoun, value=value)]
    other = _other_depths(rng, 1)[0]
    return _build(
        "split_fact",
        text,
        depth,
        needles,
        [depth, depth, other, other],
        question.format(name=people[0][0]),
        [(chosen[0], 1)],
    )


# -- counting every mention ------------------------------------------------------------------

AGGREGATES: tuple[tuple[str, str, str, tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "The freighter {name} unloaded its cargo at {place} in March.",
        "The freighter {name} was refused a berth at {place} in March.",
        "How many freighters unloaded their cargo at {place} in March?",
        ("Gdynia", "Rijeka", "Setúbal", "Klaipėda", "Varna"),
        ("Saltmarsh", "Northern", "Copper", "Amber", "Silent", "Windward", "Iron", "Pale"),
        ("Wren", "Ember", "Heron", "Lantern", "Tide", "Meridian", "Thistle", "Falcon"),
    ),
    (
        "The climber {name} reached the summit of {place} last summer.",
        "The climber {name} turned back below the summit of {place} last summer.",
        "How many climbers reached the summit of {place} last summer?",
        ("Mount Kazbek", "Mount Ararat", "Triglav", "Musala", "Grossglockner"),
        ("Ilse", "Tarik", "Brenna", "Oskar", "Mirela", "Jonas", "Sunniva", "Dario"),
        ("Valtonen", "Okafor", "Lindqvist", "Haddad", "Ferreira", "Novak", "Brandt", "Sato"),
    ),
    (
        "The mare {name} won a race at {place} this season.",
        "The mare {name} fell at the first fence at {place} this season.",
        "How many races did mares win at {place} this season?",
        ("Leopardstown", "Chantilly", "Baden-Baden", "Flemington", "Longchamp"),
        ("Velvet", "Scarlet", "Midnight", "Dusty", "Golden", "Quiet", "Wild", "Lucky"),
        ("Orchid", "Comet", "Sonnet", "Ribbon", "Harbor", "Juniper", "Saffron", "Minstrel"),
    ),
)
"""``(mention, other event, question, places, first name words, second name words)`` of
``aggregate_count``; a name is a first word and a second word."""


def aggregate_count_task(text: str, depth: float, rng: random.Random) -> RetrievalTask:
    """3 to 6 mentions of one event at one place (the first at `depth`) among 2 to 4
    distractors: the other event at that place (the first distractor), the same event at
    another place (the second), either (the rest); every mention has a distinct name. Asked
    how many of the event happened at the place, the names of its mentions are the answers."""
    mention, other_event, question, places, firsts, seconds = rng.choice(AGGREGATES)
    count, distractors = rng.randint(3, 6), rng.randint(2, 4)
    place, *others = rng.sample(places, len(places))
    pool = [f"{a} {b}" for a in firsts for b in seconds]
    names = _pick(rng, pool, text, set(), count + distractors)
    needles = [mention.format(name=n, place=place) for n in names[:count]]
    for i, name in enumerate(names[count:]):
        if i == 0 or (i > 1 and rng.random() < 0.5):
            needles.append(other_event.format(name=name, place=place))
        else:
            needles.append(mention.format(name=name, place=rng.choice(others)))
    return _build(
        "aggregate_count",
        text,
        depth,
        needles,
        [depth, *_other_depths(rng, count + distractors - 1)],
        question.format(place=place),
        [(name, i) for i, name in enumerate(names[:count])],
    )


# -- long variable chains among distractor chains --------------------------------------------


def _chains(
    rng: random.Random, text: str, lengths: Iterable[int]
) -> list[tuple[str, list[str], list[str]]]:
    """Chains of the given lengths with distinct values and names: per chain the value, the
    names and the statements ``VAR A = 1234567.``, ``VAR B = VAR A.``, ..."""
    taken: set[str] = set()
    chains = []
    for links in lengths:
        value = _number(rng, text, taken)
        names = [_variable(rng, text, taken) for _ in range(links)]
        statements = [f"VAR {names[0]} = {value}."]
        statements += [f"VAR {b} = VAR {a}." for a, b in itertools.pairwise(names)]
        chains.append((value, names, statements))
    return chains


def long_chain_task(text: str, depth: float, rng: random.Random) -> RetrievalTask:
    """A chain of 4 to 6 variables (its value's assignment at `depth`) and two distractor
    chains of 4 to 6 links, all statements at random depths otherwise; asked for the value
    of the chain's last variable. Answers: the value and every name of the chain."""
    chains = _chains(rng, text, [rng.randint(4, 6) for _ in range(3)])
    value, names, _ = chains[0]
    statements = [s for _, _, chain in chains for s in chain]
    return _build(
        "long_chain",
        text,
        depth,
        statements,
        [depth, *_other_depths(rng, len(statements) - 1)],
        f"What number does VAR {names[-1]} hold in the end?",
        [(value, 0)] + [(name, i) for i, name in enumerate(names)],
    )


# -- questions over the essays ---------------------------------------------------------------


def prose_qa_task(text: str, depth: float, rng: random.Random) -> RetrievalTask:
    """A question of `PROSE_QUESTIONS` about the essays in `text` (nothing is inserted): the
    one whose answer lies nearest to `depth` (ties broken by `rng`), as ``essay_qa`` does.
    Fails when `text` holds none of the answers."""
    found = [(text.find(answer), question, answer) for question, answer in PROSE_QUESTIONS]
    found = [item for item in found if item[0] >= 0]
    if not found:
        raise ILReError("the haystack holds none of the prose questions' passages")
    distance = [abs(start / max(1, len(text)) - depth) for start, _, _ in found]
    nearest = [item for item, d in zip(found, distance, strict=True) if d == min(distance)]
    start, question, answer = rng.choice(nearest)
    return RetrievalTask(
        context=text,
        query=question,
        answers=(answer,),
        depth=start / max(1, len(text)),
        family="prose_qa",
        answer_spans=((start, start + len(answer)),),
    )


PROSE_QUESTIONS: tuple[tuple[str, str], ...] = (
    # addiction.txt (characters 0..7.4k of the essays)
    ("Which energy device, made more efficient, is given as plainly good progress?", "solar cells"),
    (
        "Which two online games took the place of draughts and patience?",
        "World of Warcraft and FarmVille",
    ),
    (
        "What did the writer's non-smoking parents keep at home for visitors?",
        "ashtrays in our house",
    ),
    (
        "What image names people whose sad fate warns later generations off a new habit?",
        "canaries in the coal mine",
    ),
    (
        "Which principle of simplicity does the writer say he may not be able to plead?",
        "Occam's razor",
    ),
    (
        "Which religious revival might partly be a reaction to narcotics, the writer suspects?",
        "evangelical Christianity",
    ),
    # aord.txt (7.4k..15.9k)
    (
        "What share of the founders the writer meets cannot say if their firm will survive?",
        "Half the founders",
    ),
    (
        "What should founders keep apart, instead of vague optimism about the future?",
        "separate facts from hopes",
    ),
    ("What most often dooms young companies that have taken investment?", "Hiring too fast"),
    ("What protects venture investors, so that all-or-nothing bets suit them?", "portfolio effect"),
    (
        "What does Paul Buchheit call growing a weak business big for impressive numbers?",
        "premature scaling",
    ),
    # apple.txt (15.9k..28.3k)
    (
        "What does the writer call Apple's continuing loss of goodwill from its app market?",
        "karma leak",
    ),
    (
        "How does the released version feel to a developer who ships betas every day?",
        "old and crappy",
    ),
    ("Why did the search company take up its famous slogan so keenly?", "against arrogance"),
    (
        "In the famous commercial, whom would Apple no longer resemble, next to the tyrant?",
        "woman with the hammer",
    ),
    ("Which spreadsheet turned Apple's second computer into a hit?", "VisiCalc"),
    ("What would pocket devices have to become for programmers to switch?", "development machines"),
    (
        "What did the Apple I's maker plug it into because he could not afford a screen?",
        "used a TV as a monitor",
    ),
    # avg.txt (28.3k..53.7k)
    ("Where does the name of the online store builder come from?", "worked via the Web"),
    ("Roughly what proportion of new ventures make it?", "way less than fifty percent"),
    ("Whose secret codes might rivals have thought Viaweb was breaking?", "Enigma traffic"),
    ("Who wrote the assassin thriller the writer read at about nine?", "Frederick Forsyth"),
    ("How many customers did the store-building company have at its acquisition?", "1070 users"),
    (
        "For which simple jobs may a less abstract language do?",
        "number crunching or bit manipulation",
    ),
    (
        "How did the writer describe himself as a teenager writing Basic?",
        "Master of all I surveyed",
    ),
    ("How far into his Lisp book did the writer get before reaching macros?", "page 160"),
    (
        "Which rule is cited about Yahoo writing an interpreter to port the editor?",
        "Greenspun's Tenth Rule",
    ),
    # before.txt (53.7k..79.3k)
    (
        "Which sport's teachers are many because their advice surprises, unlike jogging's?",
        "ski instructors",
    ),
    (
        "How does the writer describe Facebook's founder's early knowledge of startups?",
        "complete noob",
    ),
    (
        "What does the founder who knows every fundraising trick but lacks traction have?",
        "flat usage graph",
    ),
    (
        "What do universities make sure undergraduates never run short of?",
        "contraceptives",
    ),
    (
        "In the military, which trainees turn out no tougher than the quiet ones?",
        "swaggering recruits",
    ),
    (
        "What two-word counsel closes the advice to students who might found companies?",
        "just learn",
    ),
    # bias.txt, boss.txt, copy.txt, corpdev.txt, desres.txt, diff.txt (79.3k..128.6k)
    (
        "By what margin did companies started by women beat the others in one investor's study?",
        "63%",
    ),
    (
        "Along with refined flour and sugar, which processed fat were people not built to eat?",
        "hydrogenated vegetable oil",
    ),
    ("What should a person conclude about how big a company to work for?", "aim small"),
    (
        "What price did young companies ask for each copy of rule-based AI software?",
        "a year's salary",
    ),
    ("Where in the long race does someone offer the tired runner a rest?", "mile 20"),
    (
        "Working as a designer does not mean acting as what kind of kitchen worker?",
        "short-order cook",
    ),
    (
        "What does reading aloud to her family keep the novelist's landscapes from being?",
        "self-indulgently arty",
    ),
    ("What way of working together is just another name for poor design?", "Design by committee"),
    # ecw.txt (128.6k..134.9k)
    ("For how long did the author back young companies as an investor?", "almost a decade"),
    (
        "How extreme was the home-rental founders' self-reliance, in an aside?",
        "almost pathologically so",
    ),
)
"""``(question, answer)`` pairs over the essays for ``prose_qa``, in essay order; each
answer occurs exactly once in the essays, and none is an answer of ``essay_qa``."""


HARD_FAMILIES: dict[str, Callable[[str, float, random.Random], RetrievalTask]] = {
    "long_value": long_value_task,
    "number_words": number_words_task,
    "paraphrase_fact": paraphrase_fact_task,
    "split_fact": split_fact_task,
    "aggregate_count": aggregate_count_task,
    "long_chain": long_chain_task,
    "prose_qa": prose_qa_task,
}
"""The families of this module by name, each called as ``(haystack_text, depth, rng)``."""
